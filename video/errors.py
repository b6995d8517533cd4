"""Typed errors of the video package.

Every public function of `video` raises only these for bad input (never a raw PyAV exception),
so a server can map them to HTTP answers and a training loader can skip a broken clip:

    VideoError                      base class; `str(err)` is a message for a human
    ├── NotAVideo                   empty input, text, random bytes: no container can be read
    ├── NoVideoStream               a container without a video stream (audio only, cover art)
    ├── UnsupportedCodec            a video stream FFmpeg has no decoder for
    ├── CorruptVideo                a container that is a video but is damaged (truncated,
    │                               bit flips) so that frames cannot be read
    └── LimitExceeded               the input is larger than a `Limits` allows
        ├── TooLarge                  bytes
        ├── TooLong                   duration
        ├── FrameTooLarge             width * height
        ├── DecodeTimeout             decoding wall time
        └── DecodeMemoryExceeded      memory of an isolated decoding process (video.isolation)
"""
from __future__ import annotations


class VideoError(Exception):
    """Base class of everything the video package raises for a bad or unwanted input."""


class NotAVideo(VideoError):
    """The input could not be read as a media container at all (empty, text, random bytes)."""


class NoVideoStream(VideoError):
    """The container opened but holds no video stream (e.g. an audio-only file)."""


class UnsupportedCodec(VideoError):
    """The video stream uses a codec this FFmpeg build cannot decode."""


class CorruptVideo(VideoError):
    """The input is a video container but it is damaged: frames cannot be decoded."""


class LimitExceeded(VideoError):
    """The input exceeds one of the `Limits`.

    Attributes: `value` (what the input has), `limit` (what is allowed), `unit` (of both)."""

    what = "value"
    unit = ""
    # how value and limit read in the message; fields: v, unit, and v in MB and MiB
    fmt = "{v:g} {unit}"

    def __init__(self, value: float, limit: float, message: str | None = None):
        self.value = value
        self.limit = limit
        if message is None:
            message = (f"{self.what} is {self._show(value)}, over the limit of {self._show(limit)}")
        super().__init__(message)

    @classmethod
    def _show(cls, v: float) -> str:
        return cls.fmt.format(v=v, unit=cls.unit, mb=v / 1e6, mib=v / 2**20).strip()

    def __reduce__(self):  # keep the attributes through pickling (multiprocessing data loaders)
        return (type(self), (self.value, self.limit, str(self)))


class TooLarge(LimitExceeded):
    """The input has more bytes than `Limits.max_bytes`."""

    what, unit = "the input", "bytes"
    fmt = "{v:,.0f} bytes ({mb:.1f} MB)"


class TooLong(LimitExceeded):
    """The video lasts longer than `Limits.max_duration_s`."""

    what, unit = "the video duration", "s"


class FrameTooLarge(LimitExceeded):
    """A frame has more pixels (width * height) than `Limits.max_frame_area`."""

    what, unit = "the frame area (width x height)", "pixels"
    fmt = "{v:,.0f} pixels"


class DecodeTimeout(LimitExceeded):
    """Decoding took longer than `Limits.max_decode_s` (checked between frames)."""

    what, unit = "decoding time", "s"
    fmt = "{v:.2f} s"


class DecodeMemoryExceeded(LimitExceeded):
    """Decoding needed more memory than an isolated decoding process may use (`video.isolation`:
    its address-space allowance). `value` is what the process had reached when an allocation
    failed (the allocation that failed is not known), `limit` the allowance."""

    what, unit = "decoding memory", "bytes"
    fmt = "{mib:,.0f} MiB"
