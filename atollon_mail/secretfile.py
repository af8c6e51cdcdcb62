"""Keys the appliance makes once and keeps in its data directory (SRS, mass mail)."""

from __future__ import annotations

import os
import secrets


def load_or_create_secret(configured: str | None, data_dir: str, file_name: str) -> bytes:
    """The configured secret, else the one kept in <data_dir>/<file_name>, made (random,
    mode 0600, fsynced) the first time; two processes starting together agree on it."""
    if configured:
        return configured.encode("utf-8")
    os.makedirs(data_dir, mode=0o750, exist_ok=True)
    path = os.path.join(data_dir, file_name)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(descriptor, "w") as secret_file:
            secret_file.write(secrets.token_hex(32) + "\n")
            secret_file.flush()
            os.fsync(secret_file.fileno())
    with open(path, "rb") as secret_file:
        secret = secret_file.read().strip()
    if not secret:
        raise ValueError(f"{path} is empty; remove it to have a new secret made")
    return secret
