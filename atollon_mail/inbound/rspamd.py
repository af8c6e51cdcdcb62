"""The spam filter client: rspamd over its HTTP protocol, from the reactor.

A message received on port 25 is posted to rspamd's `/checkv2` with the envelope as
headers (as Postfix's milter and mailcow/Mailu's proxies pass it: From, Rcpt per recipient,
IP, Helo, Hostname, User, Queue-Id); rspamd answers with its action ("no action",
"greylist", "add header", "rewrite subject", "soft reject", "reject"), the score and the
symbols that made it. "Not junk" and "Junk" teach it through the controller's `/learnham`
and `/learnspam`.

Nothing here waits: every request is a Deferred on twisted.web's Agent, bounded by a
timeout on the injected clock that cancels the request (and closes its connection). When
rspamd is down, slow or answers something that is not its protocol, `on_failure` decides:
"accept" fires a SpamResult with scanned=False (the message is kept, tagged "not scanned"),
"tempfail" fails with SpamFilterUnavailable, which carries the 451 4.7.1 to answer.
"""

from __future__ import annotations

import json
import math
from typing import Any

import attrs
from twisted.internet import defer, protocol
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer

from atollon_mail.config import Config
from atollon_mail.interfaces import ISpamFilter, ISpamLearner

log = Logger()

# rspamd's actions, from the mildest.
NO_ACTION = "no action"
GREYLIST = "greylist"
ADD_HEADER = "add header"
REWRITE_SUBJECT = "rewrite subject"
SOFT_REJECT = "soft reject"
REJECT = "reject"
ACTIONS = (NO_ACTION, GREYLIST, ADD_HEADER, REWRITE_SUBJECT, SOFT_REJECT, REJECT)

ON_FAILURE = ("accept", "tempfail")
DEFAULT_TIMEOUT = 10.0  # seconds; above rspamd's own task_timeout (8 s) so it answers first
MAX_RESPONSE_SIZE = 1024 * 1024  # rspamd's answers are a few KiB


class SpamFilterUnavailable(Exception):
    """rspamd could not be asked (down, too slow, or an answer outside its protocol); str()
    says what happened. The SMTP server answers 451 4.7.1: the client keeps the message."""

    smtp_code = 451
    enhanced_status = "4.7.1"
    reply = "Service unavailable - try again later"  # the SMTP reply text (as Postfix's)


@attrs.frozen(kw_only=True)
class SpamQuery:
    """One received message and its envelope, as rspamd is asked about it."""

    client_ip: str | None  # the connecting client's address
    helo: str | None  # the name it gave in HELO/EHLO
    envelope_sender: str  # MAIL FROM, "" for the null sender
    recipients: tuple[str, ...]  # RCPT TO, in order
    raw: bytes  # the message as received (with our Received: header)
    user: str | None = None  # the authenticated login, if any
    hostname: str | None = None  # the client's verified reverse DNS name; None: unknown
    queue_id: str | None = None  # our id for the message, for rspamd's log


@attrs.frozen(kw_only=True)
class SpamResult:
    """rspamd's verdict, or (scanned=False) the record that no verdict could be had."""

    action: str  # one of ACTIONS
    score: float
    required_score: float  # the score from which rspamd rejects
    symbols: tuple[tuple[str, float], ...] = ()  # (name, score), the heaviest first
    # (name, rspamd's options of that symbol), for the symbols that have options
    symbol_options: tuple[tuple[str, tuple[str, ...]], ...] = ()
    scanned: bool = True
    message: str | None = None  # rspamd's text for the SMTP reply, if it gave one
    subject: str | None = None  # the rewritten Subject (action "rewrite subject")
    failure: str | None = None  # why the message was not scanned

    def options(self, symbol: str) -> tuple[str, ...]:
        """The options rspamd gave with a symbol (e.g. the domain of a DKIM result)."""
        return dict(self.symbol_options).get(symbol, ())

    @property
    def is_spam(self) -> bool:
        """rspamd would have the message refused or marked (add header and above)."""
        return self.action in (ADD_HEADER, REWRITE_SUBJECT, SOFT_REJECT, REJECT)

    def status_header(self) -> str:
        """The value of an X-Spam-Status header (SpamAssassin's form) for this verdict."""
        if not self.scanned:
            return f"No, not scanned ({self.failure})" if self.failure else "No, not scanned"
        tests = ",".join(f"{name}({score:.2f})" for name, score in self.symbols)
        verdict = "Yes" if self.is_spam else "No"
        return (
            f"{verdict}, score={self.score:.2f} required={self.required_score:.2f}"
            f" action={self.action.replace(' ', '_')} tests={tests or 'none'}"
        )


def not_scanned(reason: str) -> SpamResult:
    """The verdict of on_failure="accept": no action, tagged as not scanned."""
    return SpamResult(
        action=NO_ACTION, score=0.0, required_score=0.0, scanned=False, failure=reason
    )


@attrs.frozen
class LearnResult:
    """What rspamd did with a message it was taught."""

    learned: bool  # False: rspamd kept it out (already learned so, too few words)
    detail: str = ""  # rspamd's reason when not learned


@attrs.frozen
class SpamStatistics:
    """The controller's `/stat`: messages scanned and learned since rspamd started, and
    learns per statfile (with the Redis backend rspamd refreshes those periodically, not at
    once; `learned` counts at once)."""

    scanned: int
    learned: int
    statfiles: tuple[tuple[str, int], ...]  # (symbol, learns), e.g. ("BAYES_HAM", 3)

    def learns(self, symbol: str) -> int:
        """Messages learned into the statfile of this symbol (BAYES_HAM, BAYES_SPAM)."""
        return sum(count for name, count in self.statfiles if name == symbol)


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{field} is not a number: {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{field} is not a finite number: {value!r}")
    return number


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError:
        raise ValueError(f"the answer is not JSON: {body[:60]!r}") from None
    if not isinstance(answer, dict):
        raise ValueError(f"the answer is not a JSON object: {body[:60]!r}")
    return answer


def parse_check_response(body: bytes) -> SpamResult:
    """rspamd's /checkv2 answer as a SpamResult; ValueError says what is wrong with it."""
    answer = _json_object(body)
    action = answer.get("action")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    symbols = answer.get("symbols", {})
    if not isinstance(symbols, dict):
        raise ValueError(f"symbols is not an object: {symbols!r}")
    scored, options = [], []
    for name, symbol in symbols.items():
        if not isinstance(symbol, dict):
            raise ValueError(f"symbol {name!r} is not an object: {symbol!r}")
        scored.append((str(name), _number(symbol.get("score", 0.0), f"the score of {name}")))
        given = symbol.get("options")
        if isinstance(given, list) and given:
            options.append((str(name), tuple(str(option) for option in given)))
    scored.sort(key=lambda item: (-item[1], item[0]))
    options.sort()
    messages = answer.get("messages")
    message = messages.get("smtp_message") if isinstance(messages, dict) else None
    subject = answer.get("subject")
    return SpamResult(
        action=action,
        score=_number(answer.get("score"), "score"),
        required_score=_number(answer.get("required_score"), "required_score"),
        symbols=tuple(scored),
        symbol_options=tuple(options),
        message=message if isinstance(message, str) and message else None,
        subject=subject if isinstance(subject, str) else None,
    )


def parse_statistics(body: bytes) -> SpamStatistics:
    """The controller's /stat answer; ValueError says what is wrong with it."""
    answer = _json_object(body)
    statfiles = []
    for statfile in answer.get("statfiles") or ():
        if not isinstance(statfile, dict) or not isinstance(statfile.get("symbol"), str):
            raise ValueError(f"a statfile without its symbol: {statfile!r}")
        count = _number(statfile.get("revision", 0), f"the learns of {statfile['symbol']}")
        statfiles.append((statfile["symbol"], int(count)))
    return SpamStatistics(
        scanned=int(_number(answer.get("scanned", 0), "scanned")),
        learned=int(_number(answer.get("learned", 0), "learned")),
        statfiles=tuple(statfiles),
    )


def query_headers(query: SpamQuery, password: str | None = None) -> Headers:
    """The envelope as rspamd's protocol headers (a null sender is sent as "<>")."""
    headers = Headers({b"User-Agent": [b"atollon-mail"]})

    def add(name: bytes, value: str | None) -> None:
        if value is not None:
            headers.addRawHeader(name, value.encode("utf-8", "replace"))

    add(b"From", query.envelope_sender or "<>")
    for recipient in query.recipients:
        add(b"Rcpt", recipient)
    add(b"IP", query.client_ip)
    add(b"Helo", query.helo)
    add(b"Hostname", query.hostname)
    add(b"User", query.user)
    add(b"Queue-Id", query.queue_id)
    add(b"Password", password)
    return headers


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """Where a request goes: an address given as such is connected to directly (no name
    resolution in the reactor's thread pool for every message); https wraps TLS."""

    def __init__(self, reactor, connect_timeout: float):
        self.reactor, self.connect_timeout = reactor, connect_timeout

    def endpointForURI(self, uri):  # noqa: N802 (IAgentEndpointFactory)
        host = uri.host.decode("ascii")
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self.reactor, host, uri.port, self.connect_timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, uri.port, self.connect_timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, uri.host, uri.port, self.connect_timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
        return endpoint


class _QuietConnectionPool(HTTPConnectionPool):
    """Twisted's pool, whose connection factories log nothing: each request to rspamd is
    a connection of its own, and Twisted's factory would log two lines ("Starting
    factory", "Stopping factory") for every message received (twisted#9330)."""

    class _factory(HTTPConnectionPool._factory):  # noqa: N801 (the name Twisted reads)
        noisy = False


@implementer(IBodyProducer)
class _BytesProducer:
    """The request body, written at once (no cooperator, so no global reactor)."""

    def __init__(self, body: bytes):
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer) -> defer.Deferred:  # noqa: N802 (IBodyProducer)
        consumer.write(self.body)
        return defer.succeed(None)

    def pauseProducing(self) -> None:  # noqa: N802
        pass

    def resumeProducing(self) -> None:  # noqa: N802
        pass

    def stopProducing(self) -> None:  # noqa: N802
        pass


class _LimitedBody(protocol.Protocol):
    """Collects a response body of at most `limit` bytes; more aborts the connection."""

    def __init__(self, deferred: defer.Deferred, limit: int):
        self.deferred, self.limit = deferred, limit
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (twisted's name)
        if self.deferred.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()
            self.deferred.errback(ValueError(f"the answer is over {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure) -> None:  # noqa: N802 (twisted's name)
        if self.deferred.called:
            return
        if reason.check(ResponseDone):
            self.deferred.callback(b"".join(self.parts))
        else:
            self.deferred.errback(reason)


def _read_body(response, limit: int = MAX_RESPONSE_SIZE) -> defer.Deferred:
    """Deferred firing with the response body; cancelling it closes the connection."""
    body: _LimitedBody

    def cancel(deferred: defer.Deferred) -> None:
        if body.transport is not None:
            body.transport.stopProducing()

    deferred: defer.Deferred = defer.Deferred(cancel)
    body = _LimitedBody(deferred, limit)
    response.deliverBody(body)
    return deferred


def _describe(failure: Failure, timeout: float) -> str:
    """One line saying why rspamd could not be asked."""
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return f"no answer within {timeout:g} s"
    if failure.check(ValueError):
        return f"an answer outside rspamd's protocol: {failure.value}"
    reasons = getattr(failure.value, "reasons", None)  # ResponseFailed and kin
    reason = reasons[0] if reasons else failure
    return f"the connection failed: {reason.getErrorMessage() or reason.type.__name__}"


@implementer(ISpamFilter, ISpamLearner)
class RspamdClient:
    """Asks rspamd at `url` (its normal worker, or its controller, which scans too) and
    teaches it through `controller_url` (default: url), sending `password` if given."""

    def __init__(
        self,
        url: str,
        reactor,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        on_failure: str = "accept",
        controller_url: str | None = None,
        password: str | None = None,
        clock=None,
        agent=None,
    ):
        if on_failure not in ON_FAILURE:
            raise ValueError(f"on_failure must be accept or tempfail, not {on_failure!r}")
        self.url = url.rstrip("/")
        self.controller_url = (controller_url or url).rstrip("/")
        self.password = password
        self.timeout = timeout
        self.on_failure = on_failure
        self.clock = clock if clock is not None else reactor
        # rspamd closes the connection after each answer: nothing to keep alive.
        self.agent = (
            agent
            if agent is not None
            else Agent.usingEndpointFactory(
                reactor,
                _Endpoints(reactor, timeout),
                pool=_QuietConnectionPool(reactor, persistent=False),
            )
        )

    def _request(
        self, method: bytes, url: str, headers: Headers, body: bytes | None
    ) -> defer.Deferred:
        """Deferred firing with (status, phrase, body bytes); fails with
        SpamFilterUnavailable saying why, after `timeout` seconds at most."""
        producer = _BytesProducer(body) if body is not None else None
        requested = self.agent.request(method, url.encode("ascii"), headers, producer)

        def read(response):
            return _read_body(response).addCallback(
                lambda data: (response.code, response.phrase, data)
            )

        def timed_out(result, timeout: float):
            # The cancelled request fails with the Agent's own error around the
            # cancellation; say what happened instead.
            if isinstance(result, Failure):
                return Failure(defer.TimeoutError(f"no answer within {timeout:g} s"))
            return result

        requested.addCallback(read)
        requested.addTimeout(self.timeout, self.clock, onTimeoutCancel=timed_out)

        def unavailable(failure: Failure):
            raise SpamFilterUnavailable(f"rspamd at {url}: {_describe(failure, self.timeout)}")

        return requested.addErrback(unavailable)

    def check(self, query: SpamQuery) -> defer.Deferred:
        """Deferred firing with rspamd's SpamResult for the message; when rspamd cannot
        answer, with not_scanned(reason) (on_failure "accept") or failing with
        SpamFilterUnavailable ("tempfail")."""
        url = self.url + "/checkv2"
        # The password is the controller's: sent only when the controller scans too.
        password = self.password if self.url == self.controller_url else None
        asked = self._request(b"POST", url, query_headers(query, password), query.raw)

        def verdict(answer: tuple[int, bytes, bytes]) -> SpamResult:
            status, phrase, body = answer
            if status != 200:
                raise SpamFilterUnavailable(
                    f"rspamd at {url}: answered {status} {_error_text(phrase, body)}"
                )
            try:
                return parse_check_response(body)
            except ValueError as problem:
                raise SpamFilterUnavailable(
                    f"rspamd at {url}: an answer outside rspamd's protocol: {problem}"
                ) from None

        def failed(failure: Failure):
            failure.trap(SpamFilterUnavailable)
            reason = str(failure.value)
            log.warn(
                "Spam filter unavailable, message {queue_id} {outcome}: {reason}",
                queue_id=query.queue_id or "-",
                outcome="accepted unscanned" if self.on_failure == "accept" else "deferred",
                reason=reason,
            )
            if self.on_failure == "accept":
                return not_scanned(reason)
            return failure

        return asked.addCallback(verdict).addErrback(failed)

    def learn(self, raw: bytes, spam: bool) -> defer.Deferred:
        """Teach rspamd that raw is spam (/learnspam) or not (/learnham): a Deferred firing
        with a LearnResult, or failing with SpamFilterUnavailable."""
        url = self.controller_url + ("/learnspam" if spam else "/learnham")
        headers = Headers({b"User-Agent": [b"atollon-mail"]})
        if self.password is not None:
            headers.addRawHeader(b"Password", self.password.encode("utf-8"))

        def learned(answer: tuple[int, bytes, bytes]) -> LearnResult:
            status, phrase, body = answer
            detail = _error_text(phrase, body)
            if status == 200:
                return LearnResult(True)
            # 204: too few words to learn from; 208 (404 with the SQLite backend)
            # "already learned as ...": a repeat.
            if status in (204, 208) or (status == 404 and "already learned" in detail):
                return LearnResult(False, detail)
            if status in (401, 403):
                detail += " (set [spam] controller_password to the controller's password)"
            raise SpamFilterUnavailable(f"rspamd at {url}: answered {status} {detail}")

        return self._request(b"POST", url, headers, raw).addCallback(learned)

    def statistics(self) -> defer.Deferred:
        """The controller's /stat as SpamStatistics (learn counts per statfile)."""
        url = self.controller_url + "/stat"
        headers = Headers({b"User-Agent": [b"atollon-mail"]})
        if self.password is not None:
            headers.addRawHeader(b"Password", self.password.encode("utf-8"))

        def parsed(answer: tuple[int, bytes, bytes]) -> SpamStatistics:
            status, phrase, body = answer
            if status != 200:
                raise SpamFilterUnavailable(
                    f"rspamd at {url}: answered {status} {_error_text(phrase, body)}"
                )
            try:
                return parse_statistics(body)
            except ValueError as problem:
                raise SpamFilterUnavailable(
                    f"rspamd at {url}: an answer outside rspamd's protocol: {problem}"
                ) from None

        return self._request(b"GET", url, headers, None).addCallback(parsed)


def _error_text(phrase: bytes, body: bytes) -> str:
    """rspamd's reason: the "error" of a JSON body, else the status phrase."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, str) and error:
        return error
    return phrase.decode("utf-8", "replace")


def build_spam_filter(config: Config, reactor, clock=None) -> RspamdClient | None:
    """The configured spam filter ([spam] rspamd_url), or None when there is none."""
    spam = config.spam
    if spam.rspamd_url is None:
        return None
    return RspamdClient(
        spam.rspamd_url,
        reactor,
        timeout=spam.timeout,
        on_failure=spam.on_failure,
        controller_url=spam.controller_url,
        password=spam.controller_password,
        clock=clock,
    )
