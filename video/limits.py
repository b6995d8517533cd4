"""`Limits`: how big an input the decoder accepts, and the checks that enforce them.

A server checks every limit it can before decoding anything: bytes before parsing, duration and
frame area from the container's metadata (`probe`), decoding wall time between frames.
"""
from __future__ import annotations

import dataclasses
import time

from .errors import DecodeTimeout, FrameTooLarge, TooLarge, TooLong


@dataclasses.dataclass(frozen=True)
class Limits:
    """Upper bounds on an input video; `None` switches one off.

    The defaults suit a server taking uploads: 200 MB, one hour, 4096x2160 (DCI 4K) frames and
    10 s of decoding. Functions given `limits=None` use these defaults; pass `Limits.unlimited()`
    (e.g. when training on a trusted data set) to switch every check off.
    """

    max_bytes: int | None = 200_000_000
    max_duration_s: float | None = 3600.0
    max_frame_area: int | None = 4096 * 2160
    max_decode_s: float | None = 10.0

    @classmethod
    def unlimited(cls) -> "Limits":
        return cls(max_bytes=None, max_duration_s=None, max_frame_area=None, max_decode_s=None)

    def check_bytes(self, size: int) -> None:
        if self.max_bytes is not None and size > self.max_bytes:
            raise TooLarge(size, self.max_bytes)

    def check_duration(self, duration_s: float) -> None:
        if self.max_duration_s is not None and duration_s > self.max_duration_s:
            raise TooLong(duration_s, self.max_duration_s)

    def check_frame_area(self, width: int, height: int) -> None:
        if self.max_frame_area is not None and width * height > self.max_frame_area:
            raise FrameTooLarge(width * height, self.max_frame_area,
                                f"the frames are {width}x{height} = {width * height:,} pixels, "
                                f"over the limit of {self.max_frame_area:,} pixels")

    def deadline(self) -> "Deadline":
        """A clock started now that raises `DecodeTimeout` once `max_decode_s` has passed."""
        return Deadline(self.max_decode_s)


def resolve(limits: Limits | None) -> Limits:
    """`None` means the default limits."""
    return Limits() if limits is None else limits


class Deadline:
    """Wall-clock budget for one decode; `check()` is called between frames."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def check(self) -> None:
        if self.seconds is not None:
            elapsed = self.elapsed()
            if elapsed > self.seconds:
                raise DecodeTimeout(elapsed, self.seconds,
                                    f"decoding took {elapsed:.2f} s, over the limit of "
                                    f"{self.seconds:g} s (Limits.max_decode_s)")
