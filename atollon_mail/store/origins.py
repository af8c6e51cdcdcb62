"""Hooks by origin kind: how what happens to queued mail reaches whoever produced it.

Every message enters the queue with its origin (records.Origin: a kind such as
"submission", "forward" or "campaign", and the producer's own row where it has one). A
kind that keeps its own record of its mail (a campaign's send list) registers hooks here;
the queue's operations call them in the transaction that records what happened, so the
producer's record and the queue's commit together or not at all. The queue and the
delivery runner never know who produced a message.

Hooks are registered once, when the module owning them is loaded (the store package loads
every such module).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import attrs

from atollon_mail.store.records import ORIGIN_KINDS, DeliveryResult


@attrs.frozen
class Hooks:
    """What one origin kind hears of its mail, each in the caller's transaction.

    on_outcomes(results): delivery outcomes recorded, each result naming its origin.
    on_uncertain(origin_ids): the origins' rows whose message may have reached its
        recipient twice (its final dot was sent and no reply was recorded).
    on_removed(recipient_ids): queue recipients of the kind's mail that an administrator
        removed from the queue.
    notify_sender: whether the sender gets a DSN for a bounce and a delay warning; False
        for a kind whose hooks keep the record (its bounces would go to itself).
    """

    on_outcomes: Callable[[Sequence[DeliveryResult]], object] | None = None
    on_uncertain: Callable[[Sequence[int]], object] | None = None
    on_removed: Callable[[Sequence[int]], object] | None = None
    notify_sender: bool = True


NO_HOOKS = Hooks()
_registered: dict[str, Hooks] = {}


def register(
    kind: str,
    *,
    on_outcomes: Callable[[Sequence[DeliveryResult]], object] | None = None,
    on_uncertain: Callable[[Sequence[int]], object] | None = None,
    on_removed: Callable[[Sequence[int]], object] | None = None,
    notify_sender: bool = True,
) -> None:
    """The hooks of an origin kind; a kind registers once (see unregister)."""
    if kind not in ORIGIN_KINDS:
        raise ValueError(f"an origin kind is one of {', '.join(ORIGIN_KINDS)}, got {kind!r}")
    if kind in _registered:
        raise ValueError(f"the origin kind {kind!r} has its hooks already")
    _registered[kind] = Hooks(on_outcomes, on_uncertain, on_removed, notify_sender)


def unregister(kind: str) -> None:
    """The kind's hooks taken away (tests putting their own in place)."""
    _registered.pop(kind, None)


def hooks_of(kind: str | None) -> Hooks:
    """The hooks of a kind (NO_HOOKS for one without, and for mail of no recorded origin)."""
    return _registered.get(kind, NO_HOOKS) if kind is not None else NO_HOOKS


def notifies_sender(kind: str | None) -> bool:
    return hooks_of(kind).notify_sender


def _by_kind(items: Iterable, kind_of) -> dict[str, list]:
    grouped: dict[str, list] = defaultdict(list)
    for item in items:
        kind = kind_of(item)
        if kind is not None and kind in _registered:
            grouped[kind].append(item)
    return grouped


def report_outcomes(results: Sequence[DeliveryResult]) -> None:
    """Recorded outcomes to the hooks of their origins' kinds: first the outcomes, then
    the rows of those whose message may have arrived twice."""
    grouped = _by_kind(results, lambda result: result.origin and result.origin.kind)
    for kind, found in grouped.items():
        hooks = _registered[kind]
        if hooks.on_outcomes is not None:
            hooks.on_outcomes(found)
        uncertain = [r.origin.id for r in found if r.uncertain and r.origin.id is not None]
        if uncertain and hooks.on_uncertain is not None:
            hooks.on_uncertain(uncertain)


def report_uncertain(origins: Iterable[tuple[str | None, int | None]]) -> None:
    """(kind, origin id) of recipients queued again after their final dot was sent."""
    grouped = _by_kind(origins, lambda origin: origin[0])
    for kind, found in grouped.items():
        ids = [origin_id for _, origin_id in found if origin_id is not None]
        if ids and _registered[kind].on_uncertain is not None:
            _registered[kind].on_uncertain(ids)


def report_removed(recipients: Iterable[tuple[str | None, int]]) -> None:
    """(kind, queue recipient id) of recipients an administrator removed from the queue."""
    grouped = _by_kind(recipients, lambda recipient: recipient[0])
    for kind, found in grouped.items():
        if _registered[kind].on_removed is not None:
            _registered[kind].on_removed([recipient_id for _, recipient_id in found])
