"""What the server answers when a request cannot be served: one exception type carrying an HTTP
status, a machine-readable code and a human message, and the mapping from the video package's
typed errors to it.

Every error body has the same JSON shape::

    {"error": "the input is 1,048,576 bytes (1.0 MB), over the limit of ...",   # for a human
     "code": "too_large",                                                    # for a program
     "status": 413,
     "detail": {...}}                                                        # optional, per code

Statuses: 400 a malformed request or a damaged video (or one that crashed a decoding process
twice), 408 an upload that stalled or trickled, 413 an input over a limit (bytes, duration, frame
area, decode time, decoding memory), 415 something that is not a usable video, 422 parameters
that are invalid or a strict budget that cannot be met (with Retry-After when the queue is the
cause), 429 too many requests in flight or uploads in progress, 503 not ready yet (loading,
profiling, warming up) or shutting down, 500 a bug (details only in the log).
Standard library only (plus the video package's error classes).
"""
from __future__ import annotations

from video import errors as verr


class ServiceError(Exception):
    """A request the server refuses or cannot serve; `payload()` is the JSON body."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 detail: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.detail = detail or {}
        self.headers = headers or {}

    def payload(self) -> dict:
        body = {"error": self.message, "code": self.code, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        return body


class BadRequest(ServiceError):
    """400: the request itself is malformed (no video part, empty upload, broken multipart)."""

    status, code = 400, "bad_request"


class BadParameters(ServiceError):
    """422: options that are unknown, of the wrong type or out of range; lists every problem."""

    status, code = 422, "invalid_parameters"

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid parameters: " + "; ".join(self.problems),
                         detail={"problems": self.problems})


class BudgetInfeasible(ServiceError):
    """422: strict=true and no configuration is predicted to fit the budget."""

    status, code = 422, "budget_infeasible"


class PayloadTooLarge(ServiceError):
    """413: the upload has more bytes than the server accepts."""

    status, code = 413, "too_large"


class UploadTimeout(ServiceError):
    """408: the upload stalled (nothing sent for a while) or trickled in too slowly."""

    status, code = 408, "upload_timeout"


class Overloaded(ServiceError):
    """429: too many requests in flight (code overloaded) or uploads in progress (code
    too_many_uploads) in this worker; retry later."""

    status, code = 429, "overloaded"

    def __init__(self, message: str, retry_after_s: int = 1, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after_s)})


class Draining(ServiceError):
    """503: the worker is stopping (SIGTERM) and takes no new request; retry (another replica,
    or this one once restarted, answers)."""

    status, code = 503, "draining"

    def __init__(self, retry_after_s: int = 1):
        super().__init__("the server is shutting down and takes no new requests; retry",
                         headers={"Retry-After": str(retry_after_s)})


class NotReady(ServiceError):
    """503: the model is still loading or warming up, or failed to."""

    status, code = 503, "not_ready"

    def __init__(self, message: str, retry_after_s: int = 5):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


# video error class -> (status, code); the most specific class listed first wins
_VIDEO = (
    (verr.TooLarge, 413, "too_large"),
    (verr.TooLong, 413, "too_long"),
    (verr.FrameTooLarge, 413, "frame_too_large"),
    (verr.DecodeTimeout, 413, "decode_timeout"),
    (verr.DecodeMemoryExceeded, 413, "decode_memory"),
    (verr.LimitExceeded, 413, "limit_exceeded"),
    (verr.NotAVideo, 415, "not_a_video"),
    (verr.NoVideoStream, 415, "no_video_stream"),
    (verr.UnsupportedCodec, 415, "unsupported_codec"),
    (verr.CorruptVideo, 400, "corrupt_video"),
    (verr.VideoError, 400, "bad_video"),
)


def from_video_error(err: verr.VideoError) -> ServiceError:
    """The HTTP answer to one of the video package's typed errors."""
    for cls, status, code in _VIDEO:
        if isinstance(err, cls):
            detail = {}
            if isinstance(err, verr.LimitExceeded):
                detail = {"value": err.value, "limit": err.limit, "unit": err.unit}
            return ServiceError(str(err), status=status, code=code, detail=detail)
    raise TypeError(f"not a VideoError: {err!r}")  # pragma: no cover
