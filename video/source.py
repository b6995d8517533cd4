"""Inputs: a path, bytes, or a binary file object -> an open PyAV container, with the byte limit
checked before any parsing, and PyAV's exceptions translated into the package's typed errors.
"""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import BinaryIO, Union

import av

from .errors import CorruptVideo, NotAVideo, TooLarge, VideoError
from .limits import Limits

VideoSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

_CHUNK = 1 << 20  # file objects that cannot seek are read 1 MiB at a time

# Demuxers/decoders FFmpeg happily applies to things that are not videos: a `.txt` path is
# opened by the `tty` demuxer and rendered as ANSI art. They are refused as NotAVideo.
NOT_VIDEO_FORMATS = frozenset({"tty", "bin", "xbin", "adf", "idf"})
NOT_VIDEO_CODECS = frozenset({"ansi", "bintext", "xbin", "idf", "text"})


# What PyAV raises on damaged input: its FFmpeg errors, and, from a few corners of its Python
# layer, plain lookup/value/arithmetic errors (e.g. an IndexError when a damaged MPEG-TS announces
# a stream mid-file). The public functions turn these into CorruptVideo.
PYAV_ERRORS = (av.FFmpegError, LookupError, ValueError, ArithmeticError)


@contextlib.contextmanager
def damaged_input_is_corrupt(what: str = "the video could not be read"):
    """Translate PyAV's exceptions (not ours) raised inside the block into CorruptVideo."""
    try:
        yield
    except VideoError:
        raise
    except PYAV_ERRORS as err:
        raise CorruptVideo(f"{what}: {reason(err)}") from None


def reason(err: Exception) -> str:
    """A short human reason from a PyAV exception."""
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


class Source:
    """One input, normalised: either a filesystem path, or bytes, or a seekable file object."""

    def __init__(self, *, path: str | None = None, data: bytes | memoryview | None = None,
                 file: BinaryIO | None = None, size: int):
        self.path, self.data, self.file, self.size = path, data, file, size

    def read_at(self, offset: int, n: int) -> bytes:
        """Up to n bytes at offset (used to read container headers directly)."""
        if offset < 0 or offset >= self.size:
            return b""
        if self.data is not None:
            return bytes(self.data[offset:offset + n])
        if self.file is not None:  # PyAV reads the same object: leave its position as it was
            position = self.file.tell()
            try:
                self.file.seek(offset)
                return self.file.read(n)
            finally:
                self.file.seek(position)
        with open(self.path, "rb") as f:
            f.seek(offset)
            return f.read(n)

    def head(self, n: int = 64) -> bytes:
        return self.read_at(0, n)

    def open(self) -> av.container.InputContainer:
        """The container, opened for reading; NotAVideo/CorruptVideo when it cannot be."""
        if self.size == 0:
            raise NotAVideo("the input is empty (0 bytes)")
        target = self.path if self.path is not None else (
            self.file if self.file is not None else io.BytesIO(self.data))
        if self.file is not None:
            self.file.seek(0)
        try:
            container = av.open(target, mode="r", metadata_errors="replace",
                                options=_OPEN_OPTIONS)
        except av.FFmpegError as err:
            raise self._unreadable(err) from None
        if container.format.name in NOT_VIDEO_FORMATS:
            container.close()
            raise NotAVideo(f"the input is not a video (FFmpeg reads it as "
                            f"'{container.format.long_name}')")
        return container

    def _unreadable(self, err: Exception) -> VideoError:
        kind = sniff_container(self.head(256))
        if kind:
            return CorruptVideo(f"the input starts like {kind} but FFmpeg cannot read it "
                                f"({reason(err)}); it is probably truncated or damaged")
        return NotAVideo(f"the input is not a video container FFmpeg can read ({reason(err)})")


# Passed to avformat_find_stream_info's decoders: FFmpeg decodes the first pictures while opening
# a file, to learn what the container already states (a 1080p keyframe: ~100 ms of a 105 ms
# open; 5 ms without). Only the pixel format goes unlearned; decoding later is unaffected.
_OPEN_OPTIONS = {"skip_frame": "all"}


def as_source(source: VideoSource, limits: Limits) -> Source:
    """Normalise `source`, checking `limits.max_bytes` before parsing anything."""
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        size = Path(path).stat().st_size  # a missing path raises FileNotFoundError, as open() would
        limits.check_bytes(size)
        return Source(path=path, size=size)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = memoryview(source).cast("B") if not isinstance(source, bytes) else source
        limits.check_bytes(len(data))
        return Source(data=data, size=len(data))
    if hasattr(source, "read"):
        return _file_source(source, limits)
    raise TypeError(f"a video source must be a path, bytes or a binary file object, "
                    f"not {type(source).__name__}")


def _file_source(file: BinaryIO, limits: Limits) -> Source:
    seekable = False
    with contextlib.suppress(AttributeError, OSError, ValueError):
        seekable = bool(file.seekable()) and file.tell() == 0
    if seekable:
        size = file.seek(0, io.SEEK_END)
        file.seek(0)
        limits.check_bytes(size)
        return Source(file=file, size=size)
    # Not seekable (a socket, a pipe) or positioned mid-stream: read what is left, in chunks,
    # and stop as soon as the limit is passed.
    chunks, size = [], 0
    while True:
        chunk = file.read(_CHUNK)
        if not chunk:
            break
        if isinstance(chunk, str):
            raise TypeError("the file object is opened in text mode; open it with 'rb'")
        chunks.append(chunk)
        size += len(chunk)
        if limits.max_bytes is not None and size > limits.max_bytes:
            raise TooLarge(size, limits.max_bytes,
                           f"the input is more than {limits.max_bytes:,} bytes "
                           f"({limits.max_bytes / 1e6:.1f} MB, the limit); stopped reading "
                           f"after {size:,} bytes")
    data = b"".join(chunks)
    return Source(data=data, size=len(data))


def sniff_container(head: bytes) -> str | None:
    """Name of the container family a file's first bytes announce, or None."""
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "an MP4/MOV file"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "a Matroska/WebM file"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "an AVI file"
    if head.startswith(b"FLV"):
        return "an FLV file"
    if head.startswith(b"OggS"):
        return "an Ogg file"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "an MPEG program stream"
    if head.startswith(b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"):
        return "an ASF/WMV file"
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return "an MPEG transport stream"
    return None
