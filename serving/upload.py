"""Reading an upload: the request body streamed to a temporary file, with the size limit checked
while reading (never after buffering everything).

Two body shapes are accepted:

- `multipart/form-data` (curl -F, browsers, BentoML's client): the part named `video` is the
  file, whatever its declared content type (the server probes the bytes instead of trusting
  it); the other parts are option fields (`budget_ms`, ...): 2 KiB each, 16 parts at most.
  An option may come as an `application/json` part with a filename: Swagger UI sends every
  field of the form so (a Blob named "blob", as the OpenAPI document's encoding says), `null`
  or nothing at all for a field left empty; both mean "not given".
- anything else (`video/mp4`, `application/octet-stream`, curl's default url-encoded type for
  `--data-binary`, no content type): the whole body is the video; the declared type is not
  trusted either way (a JSON body fails the probe with 415, and the handler adds a hint).

Time: an upload that sends nothing for `idle_s` seconds, or that averages under `min_rate`
bytes/s once it has run for `idle_s`, is stopped with 408 (`UploadTimeout`): a client that
trickles its body holds a connection and an upload place, so it is not kept forever.

Limits: a declared Content-Length over the limit is refused before a byte is read; otherwise
the bytes are counted as they arrive and reading stops at the first chunk over the limit (the
rest is discarded by the HTTP server after the 413 is sent). The video's bytes are limited to
`max_bytes`, a multipart body to `max_bytes` + `FORM_OVERHEAD`, a raw body to `max_bytes`.

The temporary file is created in `directory` only once video bytes arrive, and removed here on
every error; on success the caller owns it (`Upload.remove()`).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .errors import BadRequest, PayloadTooLarge, UploadTimeout

VIDEO_FIELD = "video"
FORM_OVERHEAD = 64 << 10       # boundaries, part headers and option fields on top of the video
FIELD_MAX_BYTES = 2 << 10      # one option field
MAX_PARTS = 16
FILE_MARKER = object()         # the value of a non-video part that came with a filename
JSON_TYPE = "application/json"  # an option part with a filename but this type is a value


@dataclasses.dataclass
class Upload:
    path: Path | None              # the video's bytes on disk (None: no video part)
    size: int                      # bytes of the video
    filename: str | None           # as sent (not trusted, only reported)
    declared_type: str | None      # the content type the client declared (not trusted)
    form: bool = False             # True: a multipart/form-data body
    fields: list = dataclasses.field(default_factory=list)  # [(name, str | FILE_MARKER)]
    body_bytes: int = 0
    has_video_part: bool = True    # False: a form without a 'video' part

    def remove(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


def too_large(size: int, limit: int, what: str = "the video", video_limit: int | None = None):
    video_limit = limit if video_limit is None else video_limit
    return PayloadTooLarge(
        f"{what} is more than {limit:,} bytes; the limit of this server is {video_limit:,} "
        f"bytes ({video_limit / 1e6:.1f} MB) for a video; stopped reading after {size:,} bytes",
        detail={"value": size, "limit": video_limit, "unit": "bytes"})


def _header(headers: Mapping[str, str], name: str) -> str | None:
    v = headers.get(name)
    return v if v is None else str(v)


class _Sink:
    """The video's bytes -> a temporary file, created on the first write."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = Path(directory), max_bytes
        self.path: Path | None = None
        self.file = None
        self.size = 0

    def write(self, data: bytes) -> None:
        if self.size + len(data) > self.max_bytes:
            raise too_large(self.size + len(data), self.max_bytes)
        if self.file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=self.directory, prefix=f"upload-{os.getpid()}-",
                                        suffix=".bin")
            self.path = Path(name)
            self.file = os.fdopen(fd, "wb")
        self.file.write(data)
        self.size += len(data)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def discard(self) -> None:
        self.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


class _Form:
    """Callbacks of python-multipart's streaming parser: the video part to the sink, the other
    parts into (name, value) fields."""

    def __init__(self, sink: _Sink):
        self.sink = sink
        self.fields: list = []
        self.parts = 0
        self.videos = 0
        self.filename: str | None = None
        self.declared_type: str | None = None
        self.ended = False
        self._reset()

    def _reset(self):
        self.headers: dict[str, str] = {}
        self._hname = bytearray()
        self._hvalue = bytearray()
        self.name: str | None = None
        self.is_video = False
        self.is_value = True      # an option's value (else a file under an option's name)
        self.is_json = False
        self.value = bytearray()

    def callbacks(self) -> dict:
        return {"on_part_begin": self.part_begin, "on_header_field": self.header_field,
                "on_header_value": self.header_value, "on_header_end": self.header_end,
                "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
                "on_part_end": self.part_end, "on_end": self.end}

    def part_begin(self):
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise BadRequest(f"too many parts in the form (more than {MAX_PARTS})")
        self._reset()

    def header_field(self, data, start, end):
        self._hname += data[start:end]

    def header_value(self, data, start, end):
        self._hvalue += data[start:end]

    def header_end(self):
        self.headers[self._hname.decode("latin-1").strip().lower()] = \
            self._hvalue.decode("latin-1").strip()
        self._hname, self._hvalue = bytearray(), bytearray()

    def headers_finished(self):
        _, params = parse_options_header(self.headers.get("content-disposition", ""))
        name = params.get(b"name")
        if name is None:
            raise BadRequest("a form part has no name (Content-Disposition: form-data; name=...)")
        self.name = name.decode("utf-8", "replace")
        media_type, _ = parse_options_header(self.headers.get("content-type", ""))
        self.is_json = media_type.decode("latin-1").lower() == JSON_TYPE
        self.is_value = b"filename" not in params or self.is_json
        if self.name == VIDEO_FIELD:
            self.videos += 1
            if self.videos > 1:
                raise BadRequest(f"more than one '{VIDEO_FIELD}' part: send one video per request")
            self.is_video = True
            self.filename = params.get(b"filename", b"").decode("utf-8", "replace") or None
            self.declared_type = self.headers.get("content-type")

    def part_data(self, data, start, end):
        if self.is_video:
            self.sink.write(data[start:end])
        elif self.is_value:
            self.value += data[start:end]
            if len(self.value) > FIELD_MAX_BYTES:
                raise BadRequest(f"form field {self.name!r} is longer than {FIELD_MAX_BYTES:,} "
                                 "bytes")
        # a file part under another name: its bytes are dropped, its name reported as a field

    def part_end(self):
        if self.is_video:
            return
        if not self.is_value:
            self.fields.append((self.name, FILE_MARKER))
            return
        if self.is_json and not self.value.strip():
            self.value = bytearray(b"null")   # a field left empty in Swagger UI: not given
        try:
            self.fields.append((self.name, self.value.decode("utf-8")))
        except UnicodeDecodeError:
            raise BadRequest(f"form field {self.name!r} is not UTF-8 text") from None

    def end(self):
        self.ended = True


async def _timed(stream: AsyncIterator[bytes], idle_s: float | None, min_rate: float,
                 clock=time.monotonic) -> AsyncIterator[bytes]:
    """`stream`'s chunks, or UploadTimeout when one takes more than `idle_s`, or when the
    average rate falls under `min_rate` bytes/s after the first `idle_s` seconds."""
    if idle_s is None:
        async for chunk in stream:
            yield chunk
        return
    chunks = stream.__aiter__()
    start, total = clock(), 0
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), idle_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise UploadTimeout(f"the upload sent nothing for {idle_s:g} s after {total:,} bytes: "
                                f"stopped", detail={"bytes": total, "idle_s": idle_s}) from None
        total += len(chunk)
        elapsed = clock() - start
        if elapsed >= idle_s and total < min_rate * elapsed:
            raise UploadTimeout(f"the upload is too slow: {total:,} bytes in {elapsed:.1f} s, "
                                f"under the {min_rate:,.0f} bytes/s this server requires",
                                detail={"bytes": total, "seconds": round(elapsed, 2),
                                        "min_rate": min_rate})
        yield chunk


async def read_upload(headers: Mapping[str, str], stream: AsyncIterator[bytes], directory: Path,
                      max_bytes: int, idle_s: float | None = None,
                      min_rate: float = 0.0) -> Upload:
    """Stream a request body into an `Upload` (see the module docstring). Raises BadRequest,
    PayloadTooLarge or UploadTimeout; nothing is left on disk when it raises."""
    ctype, params = parse_options_header(_header(headers, "content-type") or "")
    ctype = ctype.decode("latin-1")
    is_form = ctype == "multipart/form-data"
    body_limit = max_bytes + FORM_OVERHEAD if is_form else max_bytes
    declared = _header(headers, "content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > body_limit:
        raise PayloadTooLarge(
            f"the request body is {int(declared):,} bytes (Content-Length), over the limit of "
            f"{max_bytes:,} bytes ({max_bytes / 1e6:.1f} MB) for a video"
            + (" plus the form" if is_form else ""),
            detail={"value": int(declared), "limit": max_bytes, "unit": "bytes"})
    sink = _Sink(directory, max_bytes)
    form = None
    parser = None
    if is_form:
        boundary = params.get(b"boundary")
        if not boundary:
            raise BadRequest("multipart/form-data without a boundary parameter")
        form = _Form(sink)
        parser = MultipartParser(boundary, form.callbacks())
    total = 0
    try:
        async for chunk in _timed(stream, idle_s, min_rate):
            if not chunk:
                continue
            total += len(chunk)
            if total > body_limit:
                raise too_large(total, body_limit, "the request body", max_bytes)
            if parser is not None:
                parser.write(chunk)
            else:
                sink.write(chunk)
        if parser is not None:
            parser.finalize()
            if not form.ended:
                raise BadRequest("the multipart body ended before its closing boundary "
                                 "(a truncated request)")
        sink.close()
    except MultipartParseError as e:
        sink.discard()
        raise BadRequest(f"malformed multipart/form-data body: {e}") from None
    except BaseException:  # ours, a client that went away, a cancelled task: nothing left behind
        sink.discard()
        raise
    if form is None:
        return Upload(sink.path, sink.size, None, ctype or None, False, [], total)
    return Upload(sink.path, sink.size, form.filename, form.declared_type, True, form.fields,
                  total, has_video_part=form.videos > 0)
