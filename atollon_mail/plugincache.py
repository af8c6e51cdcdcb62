"""Twisted's plugin caches, made current at install time.

`twistd` looks its plugins up at every start. Where a twisted/plugins directory's
dropin.cache is missing or older than a module beside it, Twisted rebuilds the cache and
writes it back; a service user that may not write there gets "Unable to write to plugin
cache" logged at every start. So the caches are built when the code is installed, by the
user who installed it:

    python -m atollon_mail.plugincache

`make install` runs it; after `pip install .` (or an upgrade) run it with the same Python.
It exits 1 with one line when a cache cannot be brought up to date.
"""

from __future__ import annotations

import pickle
import sys
from types import ModuleType

from twisted.plugin import IPlugin, getPlugins
from twisted.python.filepath import FilePath
from twisted.python.modules import getModule

CACHE_NAME = "dropin.cache"


def _plugins_package() -> ModuleType:
    import twisted.plugins

    return twisted.plugins


def stale_caches(package: ModuleType | None = None) -> list[str]:
    """The cache files Twisted would write at the next plugin lookup (the test Twisted's
    own `getCache` makes: a module newer than the cache, or one missing from it, or an
    entry for a module that is gone)."""
    package = package or _plugins_package()
    directories: dict[FilePath, list] = {}
    for module in getModule(package.__name__).iterModules():
        directories.setdefault(module.filePath.parent(), []).append(module)
    stale = []
    for directory, modules in directories.items():
        cache = directory.child(CACHE_NAME)
        try:
            cached_at = cache.getModificationTime()
            with cache.open("r") as cache_file:
                entries = pickle.load(cache_file)
        except Exception:  # missing or unreadable: Twisted starts afresh and writes it
            stale.append(cache.path)
            continue
        names = {module.name.split(".")[-1] for module in modules}
        if set(entries) != names or any(
            module.filePath.getModificationTime() >= cached_at for module in modules
        ):
            stale.append(cache.path)
    return sorted(stale)


def refresh(package: ModuleType | None = None) -> list[str]:
    """Have Twisted rebuild the stale caches; the ones still stale afterwards."""
    package = package or _plugins_package()
    list(getPlugins(IPlugin, package))
    return stale_caches(package)


def main() -> int:
    left = refresh()
    if left:
        print(
            f"atollon-mail: cannot bring the Twisted plugin cache {left[0]} up to date; "
            "run this as the user who installed atollon-mail",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
