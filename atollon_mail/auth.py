"""The one authenticator: every password the appliance is given (SMTP AUTH on 587 and 465,
the web login) is checked here, against one throttle.

The throttle counts failed logins and logins still being checked, under two keys:

- per client address and login: `login_limit` (5) attempts at one login from one address
  within `window` (10 minutes) block that login from that address;
- per client address: `address_limit` (20) attempts from one address, all logins
  together, block the address.

So one attacker behind a NAT, where every user has the same address, locks out the login
it guesses and not the others, until it has spent the address's larger allowance. Behind
a trusted reverse proxy the web passes the client the proxy names (WebApp.client_address),
not the proxy's address. Attempts in progress count like failures: a burst of parallel
guesses gets no more argon2 checks than the limit, and a right password sent in the same
burst is refused like the rest. A successful login forgets the failures of that login from
that address, never those of the address (an attacker with an account of its own could
reset its count). A check that could not be made (the store did not answer) is not counted.

The login may be given as the address of a mailbox (name@example.com, what mail clients
ask for): it stands for the login of the mailbox's owner, whose password is checked. Such
an attempt counts under the name given and under the login it stands for, so guessing
alice's password through her addresses spends alice's allowance too. An address that is
no mailbox's goes the way of an unknown login (the unknown user's hash is verified).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from atollon_mail.addresses import client_key
from atollon_mail.interfaces import IAuthenticator
from atollon_mail.passwords import hash_password, verify_password
from atollon_mail.store import accounts

LOGIN_LIMIT = 5
ADDRESS_LIMIT = 20
WINDOW = 600.0  # seconds
MAX_TRACKED = 10_000  # entries per table; the oldest go first
MAX_LOGIN_KEY = 256  # characters of a login kept as a throttle key
MAX_ADDRESS = 320  # characters of a mailbox address given as the login (64 @ 253, and spaces)

# Its hash is verified against when the login does not exist, so a wrong login costs as
# long as a wrong password and the timing does not tell which logins exist. Hashed once,
# in the CPU pool, when first needed (not at import: argon2 takes a while).
_UNKNOWN_USER_PASSWORD = "no such user: this hash never verifies a real password"


class Throttled(Exception):
    """Too many recent or running attempts: refused without checking the password."""

    def __init__(self, retry_after: float):
        super().__init__(f"too many login attempts; try again in {math.ceil(retry_after)} s")
        self.retry_after = retry_after


def login_key(login: str) -> str:
    """A login as the store finds it (case and surrounding spaces do not matter)."""
    return login.strip().lower()[:MAX_LOGIN_KEY]


class FailureTable:
    """Failures and attempts in progress per key: `limit` of them within `window` seconds
    block the key until `window` seconds after its last failure.

    Entries are kept in the order of their last failure, which is also the order they
    expire in, so dropping expired ones and, beyond `max_keys`, the oldest costs O(1).
    """

    def __init__(self, clock: Any, limit: int, window: float, max_keys: int = MAX_TRACKED):
        self.clock = clock
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: collections.OrderedDict[Hashable, collections.deque[float]] = (
            collections.OrderedDict()
        )
        self._in_flight: dict[Hashable, int] = {}

    def __len__(self) -> int:
        """How many keys have failures on record."""
        return len(self._failures)

    def _recent(self, key: Hashable) -> collections.deque[float] | None:
        failures = self._failures.get(key)
        if failures is not None and self.clock.seconds() >= failures[-1] + self.window:
            del self._failures[key]
            return None
        return failures

    def blocked(self, key: Hashable) -> bool:
        failures = self._recent(key)
        return (
            failures is not None
            and len(failures) >= self.limit
            and failures[-1] - failures[0] < self.window
        )

    def retry_after(self, key: Hashable) -> float:
        """Seconds until the key may try again (the whole window while attempts run)."""
        failures = self._recent(key)
        if failures is not None and self.blocked(key):
            return failures[-1] + self.window - self.clock.seconds()
        return self.window

    def may_attempt(self, key: Hashable) -> bool:
        if self.blocked(key):
            return False
        failures = self._recent(key)
        since = self.clock.seconds() - self.window
        recent = sum(1 for when in failures if when > since) if failures else 0
        return recent + self._in_flight.get(key, 0) < self.limit

    def in_flight(self, key: Hashable) -> int:
        return self._in_flight.get(key, 0)

    def started(self, key: Hashable) -> None:
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def finished(self, key: Hashable, failed: bool) -> None:
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)
        if failed:
            self._record_failure(key)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def _record_failure(self, key: Hashable) -> None:
        now = self.clock.seconds()
        failures = self._failures.pop(key, None)
        if failures is None:
            failures = collections.deque(maxlen=self.limit)
        failures.append(now)
        self._failures[key] = failures
        while self._failures:
            oldest = next(iter(self._failures.values()))
            if now < oldest[-1] + self.window:
                break
            self._failures.popitem(last=False)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)


CheckPassword = Callable[[str, str], "defer.Deferred[Any]"]


class PasswordChecker:
    """The password check itself: the user's argon2id hash from the store, verified in the
    CPU worker pool (never on the reactor thread)."""

    def __init__(self, store: Any, reactor: Any, threadpool: Any):
        self._store = store
        self._reactor = reactor
        self._threadpool = threadpool
        self._unknown_user_hash: str | None = None
        self._hashing: list[defer.Deferred] = []  # waiting for the unknown user's hash

    def _in_pool(self, function, *args) -> defer.Deferred:
        return deferToThreadPool(self._reactor, self._threadpool, function, *args)

    def unknown_user_hash(self) -> defer.Deferred:
        """Deferred firing with the hash verified when a login does not exist."""
        if self._unknown_user_hash is not None:
            return defer.succeed(self._unknown_user_hash)
        waiter: defer.Deferred = defer.Deferred()
        self._hashing.append(waiter)
        if len(self._hashing) == 1:
            self._in_pool(hash_password, _UNKNOWN_USER_PASSWORD).addBoth(self._hashed)
        return waiter

    def _hashed(self, result) -> None:
        waiters, self._hashing = self._hashing, []
        if isinstance(result, Failure):
            for waiter in waiters:
                waiter.errback(result)
            return
        self._unknown_user_hash = result
        for waiter in waiters:
            waiter.callback(result)

    def resolve(self, name: str) -> defer.Deferred:
        """Deferred firing with the login a mailbox address stands for (its owner's), or
        None: for a name that is no address (a login itself) without asking the store, and
        for an address that is no active mailbox's. A login never holds "@"."""
        if "@" not in name or len(name) > MAX_ADDRESS:
            return defer.succeed(None)
        return self._store.run(accounts.login_of_address, name)

    @defer.inlineCallbacks
    def check(self, login: str, password: str):
        """Deferred firing with the UserRecord, or None when the credentials are wrong."""
        found = yield self._store.run(accounts.authenticate_lookup, login)
        if found is not None:
            user, password_hash = found
        else:
            user, password_hash = None, (yield self.unknown_user_hash())
        valid = yield self._in_pool(verify_password, password_hash, password)
        return user if (valid and user is not None) else None


@implementer(IAuthenticator)
class Authenticator:
    """A password check (`check(login, password)`, normally PasswordChecker.check) behind
    the throttle described at the top of this module. With `resolve(name)` (normally
    PasswordChecker.resolve: a Deferred of the login a mailbox address stands for, or
    None), the check is made for the login resolved, and counted under it too."""

    def __init__(
        self,
        check: CheckPassword,
        clock: Any,
        login_limit: int = LOGIN_LIMIT,
        address_limit: int = ADDRESS_LIMIT,
        window: float = WINDOW,
        max_tracked: int = MAX_TRACKED,
        resolve: Callable[[str], defer.Deferred] | None = None,
    ):
        self._check = check
        self._resolve = resolve
        self.clock = clock
        self.window = window
        self.by_address = FailureTable(clock, address_limit, window, max_tracked)
        self.by_login = FailureTable(clock, login_limit, window, max_tracked)

    def blocked(self, client: str | None) -> bool:
        return self.by_address.blocked(client_key(client))

    def login_blocked(self, client: str | None, login: str) -> bool:
        return self.by_login.blocked((client_key(client), login_key(login)))

    def authenticate(self, client: str | None, login: str, password: str) -> defer.Deferred:
        address = client_key(client)
        pair = (address, login_key(login))
        for table, key in ((self.by_address, address), (self.by_login, pair)):
            if not table.may_attempt(key):
                return defer.fail(Throttled(table.retry_after(key)))
        self.by_address.started(address)
        self.by_login.started(pair)
        pairs = [pair]

        def resolved(owner: str | None):
            name = login
            if owner is not None and login_key(owner) != pair[1]:
                owner_pair = (address, login_key(owner))
                if not self.by_login.may_attempt(owner_pair):
                    raise Throttled(self.by_login.retry_after(owner_pair))
                self.by_login.started(owner_pair)
                pairs.append(owner_pair)
                name = owner
            return self._check(name, password)

        def checked(user):
            self.by_address.finished(address, failed=user is None)
            for each in pairs:
                self.by_login.finished(each, failed=user is None)
                if user is not None:
                    self.by_login.forget(each)
            return user

        def unchecked(failure):
            # Refused by the owner's count, or not checked at all: neither is a failure.
            self.by_address.finished(address, failed=False)
            for each in pairs:
                self.by_login.finished(each, failed=False)
            return failure

        resolving = (
            defer.maybeDeferred(self._resolve, login)
            if self._resolve is not None
            else defer.succeed(None)
        )
        return resolving.addCallback(resolved).addCallbacks(checked, unchecked)


def build_authenticator(store: Any, reactor: Any, threadpool: Any, clock: Any = None):
    """The appliance's authenticator: argon2 in `threadpool`, the default limits, a
    mailbox's address accepted as its owner's login."""
    checker = PasswordChecker(store, reactor, threadpool)
    return Authenticator(
        checker.check, clock if clock is not None else reactor, resolve=checker.resolve
    )
