"""Results of store reads kept a short while on the app's clock, shared by the views that
ask meanwhile: a page many people (or one impatient person) reload costs one store
operation per period, however many views, and never two at once."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from twisted.internet import defer


class Cached:
    """`get(key, read)`: the Deferred result of `read()` for `key`, read again once it
    is `seconds` old (on `clock`). Views asking while a read is under way wait for that
    read. A failed read is not kept: the next view reads again."""

    def __init__(self, clock, seconds: float, limit: int = 1000):
        self._clock = clock
        self._seconds = seconds
        # Keys kept at most (campaigns, say): the oldest kept result is dropped first.
        self._limit = limit
        self._kept: dict[Hashable, tuple[float, object]] = {}
        self._pending: dict[Hashable, list[defer.Deferred]] = {}

    def get(self, key: Hashable, read: Callable[[], defer.Deferred]) -> defer.Deferred:
        kept = self._kept.get(key)
        if kept is not None and self._clock.seconds() - kept[0] < self._seconds:
            return defer.succeed(kept[1])
        waiting = self._pending.get(key)
        if waiting is not None:
            mine: defer.Deferred = defer.Deferred()
            waiting.append(mine)
            return mine
        self._pending[key] = waiters = []
        started = self._clock.seconds()
        done = defer.maybeDeferred(read)

        def got(result):
            self._kept.pop(key, None)
            if len(self._kept) >= self._limit:
                self._kept.pop(next(iter(self._kept)))
            self._kept[key] = (started, result)
            del self._pending[key]
            for waiter in waiters:
                waiter.callback(result)
            return result

        def failed(failure):
            del self._pending[key]
            for waiter in waiters:
                waiter.errback(failure)
            return failure

        done.addCallbacks(got, failed)
        return done
