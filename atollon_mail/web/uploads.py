"""Files uploaded with a multipart/form-data form (the compose page's attachments).

The body is parsed by the `multipart` library, from the request's content as twisted.web
stored it (on disk past 100 kB); twisted.web's own parsing of such bodies, which reads
the whole body into memory and drops the file names, is turned off by BodyLimitedRequest.
The route's body limit (bodylimit.py) has bounded the body before a byte of it was read.
"""

from __future__ import annotations

import attrs
import multipart

# A form with more parts than this is refused (each file is a part; so is each field).
MOST_PARTS = 200


@attrs.frozen
class Upload:
    """One file sent with a form: the field it came in, the name the browser gave it, the
    type the browser said (often application/octet-stream) and its bytes."""

    field: str
    filename: str
    content_type: str
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


def is_multipart(content_type: bytes) -> bool:
    kind = content_type.split(b";")[0].strip().lower()
    return kind == b"multipart/form-data"


def read_multipart(stream, content_type: bytes, length: int):
    """(fields, files) of a multipart/form-data body: the first value of each text field,
    the files in order (an empty file input sends a part with no name and no bytes: left
    out). None when the body is not a well-formed multipart form."""
    _, options = multipart.parse_options_header(content_type.decode("latin-1"))
    boundary = options.get("boundary")
    if not boundary:
        return None
    fields: dict[str, str] = {}
    files: list[Upload] = []
    try:
        parser = multipart.MultipartParser(
            stream,
            boundary,
            content_length=length,
            part_limit=MOST_PARTS,
            # The route's body limit bounds the whole; parts past this go to disk.
            memory_limit=max(length, 1) + 1,
            spool_limit=256 * 1024,
        )
        for part in parser:
            try:
                if part.filename is None:
                    fields.setdefault(part.name, part.value)
                elif part.filename or part.size:
                    files.append(
                        Upload(
                            field=part.name,
                            filename=part.filename,
                            content_type=part.content_type or "application/octet-stream",
                            data=part.raw,
                        )
                    )
            finally:
                part.close()
    except (multipart.MultipartError, UnicodeDecodeError, ValueError):
        return None
    return fields, files
