"""`probe`: what a video is, from its container's metadata only (no frame is decoded).

The server calls it first: it is cheap (the container header, plus a few reads for the display
matrix), it checks the byte, duration and frame-area limits so a request can be refused before
any decoding, and its `VideoInfo` feeds both the decode-cost model and `decode_frames`.
"""
from __future__ import annotations

import dataclasses
import re
from fractions import Fraction

import av

from . import rotation as rot
from .errors import NoVideoStream, NotAVideo, UnsupportedCodec
from .limits import Limits, resolve
from .source import NOT_VIDEO_CODECS, Source, VideoSource, as_source, damaged_input_is_corrupt

_INDEX_SCAN_MAX = 20_000  # index entries scanned for keyframe statistics (~4 ms)


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """Metadata of one video stream of a container.

    Sizes are as displayed: `width`/`height` are swapped from the coded size when `rotation` is
    90 or 270. Times are seconds from the first frame. `None` marks what the container does not
    say (e.g. the duration of a raw H.264 stream)."""

    duration_s: float | None     # length of the video stream
    fps: float                   # average frame rate (frames / duration), or the nominal rate
    num_frames: int | None       # from the stream header, else estimated as duration * fps
    num_frames_exact: bool       # True if num_frames comes from the container, not an estimate
    width: int                   # displayed width (after rotation)
    height: int                  # displayed height (after rotation)
    coded_width: int             # width of the decoded pictures
    coded_height: int
    rotation: int                # counter-clockwise degrees to turn decoded pictures: 0/90/180/270
    codec: str                   # FFmpeg decoder name, e.g. "h264", "vp9", "mjpeg"
    pix_fmt: str | None          # e.g. "yuv420p"; None where only a decoded picture would say
                                 # (H.264 in MP4: opening decodes nothing, see video.source)
    container: str               # FFmpeg demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    bit_rate: int | None         # bits per second (container's, else the stream's)
    has_audio: bool
    size_bytes: int
    sample_aspect_ratio: Fraction | None  # pixel shape; not applied by decode_frames
    keyframes: int | None        # keyframes listed in the container's index, if it has one
    keyframe_interval_s: float | None  # mean distance between indexed keyframes
    stream_index: int            # which stream of the container is the video
    time_base: Fraction          # of the stream's timestamps
    start_pts: int               # timestamp of the first frame, in time_base units
    keyframe_max_gap_s: float | None = None  # largest distance between indexed keyframes
    keyframe_bytes: float | None = None      # mean size of an indexed keyframe (MP4 says)

    @property
    def frame_area(self) -> int:
        return self.coded_width * self.coded_height


def probe(source: VideoSource, limits: Limits | None = None) -> VideoInfo:
    """Read a video's metadata without decoding; check `limits` (bytes, duration, frame area).

    `source`: a path, bytes-like, or a binary file object. `limits=None` means `Limits()`.
    Raises NotAVideo, NoVideoStream, CorruptVideo, UnsupportedCodec, TooLarge, TooLong or
    FrameTooLarge."""
    limits = resolve(limits)
    src = as_source(source, limits)
    container = src.open()
    try:
        with damaged_input_is_corrupt("the container's metadata could not be read"):
            info = probe_container(container, src)
    finally:
        container.close()
    check_limits(info, limits)
    return info


def check_limits(info: VideoInfo, limits: Limits) -> None:
    limits.check_bytes(info.size_bytes)
    limits.check_frame_area(info.coded_width, info.coded_height)
    if info.duration_s is not None:
        limits.check_duration(info.duration_s)


def video_stream(container) -> av.video.stream.VideoStream:
    """The container's main video stream (cover art and other still pictures are not video)."""
    fmt = container.format.name
    if fmt == "image2" or fmt.endswith("_pipe"):  # FFmpeg's single-image demuxers: png_pipe, jpeg_pipe, ...
        raise NotAVideo(f"the input is a still image ({fmt.removesuffix('_pipe')}), not a video")
    streams = [s for s in container.streams.video
               if not s.disposition & av.stream.Disposition.attached_pic]
    if not streams:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise NoVideoStream(f"the container ({container.format.name}) has no video stream, only: "
                            f"{', '.join(kinds)}")
    default = [s for s in streams if s.disposition & av.stream.Disposition.default]
    stream = (default or streams)[0]
    ctx = stream.codec_context
    if ctx is None:
        raise UnsupportedCodec("this FFmpeg build has no decoder for the file's video codec")
    if ctx.name in NOT_VIDEO_CODECS:
        raise NotAVideo(f"the input is not a video (FFmpeg reads it as '{ctx.name}' text)")
    return stream


def probe_container(container, src: Source) -> VideoInfo:
    """`VideoInfo` of an open container (`src` gives its size and raw bytes)."""
    stream = video_stream(container)
    ctx = stream.codec_context
    time_base = stream.time_base or Fraction(1, 1_000_000)
    start_pts = stream.start_time if stream.start_time is not None else 0

    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    duration = _stream_duration(container, stream, time_base)
    frames = stream.frames or None
    if rate:
        fps = float(rate)
    elif frames and duration:
        fps = frames / duration
    else:
        fps = 25.0  # nothing to go on: FFmpeg's own default for raw streams
    exact = frames is not None
    if frames is None and duration is not None:
        frames = max(1, round(duration * fps))
    if duration is None and exact:
        duration = frames / fps

    width, height = ctx.width, ctx.height
    angle = rot.container_rotation(src.read_at, src.size, container.format.name, stream.id)
    if angle is None:
        angle = rot.legacy_rotate_tag(stream.metadata) or 0
    shown_w, shown_h = (height, width) if angle in (90, 270) else (width, height)

    keys = _keyframe_stats(stream, time_base)
    bit_rate = container.bit_rate or getattr(stream, "bit_rate", None) or None
    return VideoInfo(
        duration_s=duration, fps=fps, num_frames=frames, num_frames_exact=exact,
        width=shown_w, height=shown_h, coded_width=width, coded_height=height, rotation=angle,
        codec=ctx.name, pix_fmt=ctx.pix_fmt, container=container.format.name, bit_rate=bit_rate,
        has_audio=any(s.type == "audio" for s in container.streams), size_bytes=src.size,
        sample_aspect_ratio=stream.sample_aspect_ratio or None,
        keyframes=keys.count, keyframe_interval_s=keys.interval_s, stream_index=stream.index,
        time_base=time_base, start_pts=start_pts, keyframe_max_gap_s=keys.max_gap_s,
        keyframe_bytes=keys.mean_bytes)


def _stream_duration(container, stream, time_base: Fraction) -> float | None:
    """Length of the video stream: its own duration, its Matroska DURATION tag, or the
    container's duration, in that order of trust."""
    if stream.duration:
        return float(stream.duration * time_base)
    tag = _parse_clock(stream.metadata.get("DURATION") or stream.metadata.get("duration"))
    if tag:
        return tag
    if container.duration:  # in microseconds, from the container's start (its earliest stream)
        container_start = (container.start_time or 0) / 1e6
        video_start = (float(stream.start_time * time_base) if stream.start_time is not None
                       else container_start)
        return max(0.0, container_start + container.duration / 1e6 - video_start)
    return None


def _parse_clock(text: str | None) -> float | None:
    """'00:01:02.500000000' -> 62.5"""
    m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*", text or "")
    if not m:
        return None
    return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])


@dataclasses.dataclass(frozen=True)
class _Keyframes:
    count: int | None = None
    interval_s: float | None = None
    max_gap_s: float | None = None
    mean_bytes: float | None = None


def _keyframe_stats(stream, time_base: Fraction) -> _Keyframes:
    """Keyframe count, mean and largest spacing, and mean size from the container index, when
    it is small enough to scan in a few milliseconds (MP4 lists every sample with its size;
    Matroska's cues list keyframes, without sizes)."""
    entries = getattr(stream, "index_entries", None)  # PyAV >= 17
    n = len(entries) if entries is not None else 0
    if n == 0 or n > _INDEX_SCAN_MAX:
        return _Keyframes()
    keys = [(e.timestamp, e.size) for e in entries if e.is_keyframe]
    if not keys:
        return _Keyframes()
    sizes = [size for _, size in keys if size > 0]
    mean_bytes = sum(sizes) / len(sizes) if len(sizes) == len(keys) else None
    if len(keys) < 2:
        return _Keyframes(len(keys), mean_bytes=mean_bytes)
    stamps = sorted(t for t, _ in keys)
    gaps = [float((b - a) * time_base) for a, b in zip(stamps, stamps[1:])]
    return _Keyframes(len(keys), sum(gaps) / len(gaps), max(gaps), mean_bytes)
