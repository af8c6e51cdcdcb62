"""Request bodies over their path's limit are refused before they are read.

twisted.web reads a whole request body (into memory, or a temporary file past 100 kB)
before any resource sees the request, so a check in a page comes too late: anyone could
fill the disk with one unauthenticated POST. BodyLimitedRequest, given to the Site as its
requestFactory, decides when the headers are complete:

- a Content-Length over the limit is answered 413 at once, before a byte of the body is
  read, and the connection is closed;
- a chunked body is counted as it arrives and cut off (413, closed) the moment it passes
  the limit.

The limit of a path comes from the site's root resource, `root.body_limit(path, request)`
(the web app's routes each have their own, larger ones only for a logged-in user); without
one, DEFAULT_BODY_LIMIT applies. A multipart/form-data body (uploads) is left unparsed
here: twisted.web would read it whole into memory; the web app parses it (uploads.py).
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.web.server import Request

from atollon_mail.web.limits import plain_response
from atollon_mail.web.uploads import is_multipart

log = Logger()

DEFAULT_BODY_LIMIT = 64 * 1024
# twisted.web keeps a body of a known length below this in memory, a larger one on disk.
_IN_MEMORY = 100_000


class BodyLimitedRequest(Request):
    """A Request that refuses a body larger than its path allows (see the module)."""

    body_limit = DEFAULT_BODY_LIMIT
    body_received = 0
    body_refused = False

    def gotLength(self, length):
        self.body_limit = self._path_limit()
        if is_multipart(self.requestHeaders.getRawHeaders(b"content-type", [b""])[0]):
            self._parsePOSTFormSubmission = False
        if length is not None and length > self.body_limit:
            self._refuse_body(length)
            return
        if length is None and self.body_limit < _IN_MEMORY:
            length = self.body_limit  # a chunked body that may not outgrow memory's share
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.body_refused:
            return
        self.body_received += len(data)
        if self.body_received > self.body_limit:
            self._refuse_body(None)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command, path, version):
        if self.body_refused:
            return  # answered already; the connection is closing
        super().requestReceived(command, path, version)

    def _path_limit(self) -> int:
        # The request line is parsed by the channel; the Request learns it only once the
        # body is in (requestReceived), which is what this class must not wait for.
        target = getattr(self.channel, "_path", None) or b"/"
        path = target.split(b"?", 1)[0]
        limit_of = getattr(self._root(), "body_limit", None)
        return DEFAULT_BODY_LIMIT if limit_of is None else limit_of(path, self)

    def _root(self):
        return getattr(getattr(self.channel, "site", None), "resource", None)

    def _client(self) -> str:
        # Behind a trusted reverse proxy, the client it names (WebApp.client_address).
        resolve = getattr(self._root(), "client_address", None)
        return resolve(self) if resolve is not None else getattr(self.client, "host", "?")

    def _refuse_body(self, length: int | None) -> None:
        self.body_refused = True
        # No "100 Continue" for a body that is refused (the channel checks after gotLength).
        self.requestHeaders.removeHeader(b"expect")
        text = (
            f"The request body is larger than this page accepts ({self.body_limit} bytes); "
            "send less.\n"
        ).encode()
        log.info(
            "web: refused a request body over {limit} bytes ({length}) for {path} from {client}",
            limit=self.body_limit,
            length="chunked" if length is None else f"Content-Length {length}",
            path=(getattr(self.channel, "_path", None) or b"?").decode("ascii", "replace")[:200],
            client=self._client(),
        )
        self.channel.transport.write(plain_response(b"413 Content Too Large", text))
        self.channel.loseConnection()
