"""Sparse decoding: exactly the frames a clip needs, never the whole video when it need not.

For each target time (ascending) the reader either keeps decoding forward or seeks to the
keyframe at or before the target, whichever decodes fewer frames: it seeks only when a keyframe
lies between where the decoder is and the target (known from the container's index, or, for
containers without one, guessed from the keyframe spacing seen so far). While it decodes towards a
target it tells the decoder to skip non-reference pictures shown before the target (nothing
depends on them, and a later picture is on screen at the target).

The frame chosen for a time t is the one on screen at t: the last frame whose timestamp is <= t
(the first frame if t is before it, the last if t is past the end). Frames are picked by
timestamp, not by counting, so variable frame rates work; a video with fewer frames than asked
for gives repeated frames, in order.

Decode modes: "exact" decodes the frame at each sampled time (above). "keyframe" takes, in each
sampling segment, the keyframe nearest the sampled time when one lies inside the segment, and
the exact frame otherwise: a keyframe decodes on its own (one picture, no run from the previous
keyframe), so with keyframes every second or so a clip costs about one picture per frame asked
for. The keyframes are found by demuxing the stream once (packets only, no decoding). The frames
are those `exact` decodes at the chosen times (tests/test_decode.py compares them).
"""
from __future__ import annotations

import collections
import dataclasses
import math
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from . import rotation as rot
from .errors import CorruptVideo, FrameTooLarge, TooLong
from .limits import Deadline, Limits, resolve
from .probe import VideoInfo, check_limits, probe_container, video_stream
from .sampling import MODES, Rng, sample_times
from .source import (PYAV_ERRORS, Source, VideoSource, as_source, damaged_input_is_corrupt,
                     reason)
from .transforms import short_side_size

if TYPE_CHECKING:  # load_clip returns a tensor; torch is imported only when it runs
    import torch

# Keep decoding (rather than seek) when the target is this many frames ahead or fewer.
_CONTINUE_FRAMES = 2
# Without a container index, seek when the target is further ahead than the keyframe spacing seen
# so far, or than this before any spacing has been seen.
_DEFAULT_GOP_S = 2.0
# Packets demuxed ahead of the decoder, to know which pictures are shown before a target (more
# than any codec's reordering depth).
_REORDER_WINDOW = 16
DECODE_MODES = ("exact", "keyframe")
# Timestamps closer than this (seconds) count as equal.
_EPS = 1e-6
# A seek that lands after its target is retried this many times, further back each time.
_SEEK_RETRIES = 3
# Targets beyond the last decodable frame by more than max(this, 3 frame intervals, 10% of the
# duration) mean the data ends early (a truncated file): CorruptVideo, not the last frame repeated.
# (The slack absorbs containers whose stated duration includes a longer audio track.)
_TRUNCATION_SLACK_S = 0.5


@dataclasses.dataclass
class DecodeStats:
    """What one `decode_frames` call did (pass one in to have it filled)."""

    frames_decoded: int = 0    # frames that came out of the decoder
    packets_read: int = 0      # packets demuxed for the video stream
    seeks: int = 0
    frames_converted: int = 0  # frames converted to RGB (distinct frames returned)
    target_times: list = dataclasses.field(default_factory=list)  # asked-for times, seconds
    frame_times: list = dataclasses.field(default_factory=list)   # times of the frames returned
    decode_mode: str = "exact"  # what ran ("keyframe" falls back to "exact" without keyframes)
    keyframes_used: int = 0     # targets served by a keyframe alone (keyframe mode)
    elapsed_s: float = 0.0


def decode_frames(source: VideoSource, num_frames: int, mode: str = "test", rng: Rng = None,
                  limits: Limits | None = None, short_side: int | None = None,
                  info: VideoInfo | None = None, *, times=None,
                  stats: DecodeStats | None = None, decode_mode: str = "exact") -> np.ndarray:
    """Decode `num_frames` frames sampled over the whole video -> (T, H, W, 3) uint8 RGB.

    Frames are in display orientation (the container's rotation applied). `mode`/`rng`: see
    `sample_times`; `times` (seconds from the first frame, any order) replaces the sampling.
    `short_side` resizes every frame during decoding so its shorter side is `short_side` (aspect
    kept, the longer side rounded to the nearest integer; swscale "area" averaging when
    shrinking, so without aliasing, bilinear when enlarging). `info`: a `probe` result for this
    source, to skip re-reading the metadata. `limits=None` means `Limits()`. `stats`: a
    `DecodeStats` to fill. `decode_mode`: "exact" or "keyframe" (the module's docstring; not
    with `times`, which have no segments).

    Raises the `VideoError` subclasses (see `video.errors`), never a raw PyAV exception for bad
    input."""
    limits = resolve(limits)
    stats = stats if stats is not None else DecodeStats()
    deadline = limits.deadline()
    _check_arguments(num_frames, mode, short_side, times, decode_mode)
    src = as_source(source, limits)
    container = src.open()
    try:
        with damaged_input_is_corrupt("the video could not be decoded"):
            if info is None:
                info = probe_container(container, src)
            check_limits(info, limits)
            video_stream(container)  # same checks as probe (no decoder, not a video...)
            if info.duration_s is None:  # raw streams: count packets to learn the duration
                info = _with_counted_duration(container, info, limits, deadline)
                container.close()
                container = src.open()
            if times is None:
                times = sample_times(info, num_frames, mode, rng)
            times = np.asarray(times, dtype=np.float64)
            stats.target_times = times.tolist()
            reader = _Reader(container, src, info, limits, deadline, stats)
            keyframes = {}
            if decode_mode == "keyframe":
                times, keyframes = _keyframe_targets(reader, times, info.duration_s)
                stats.decode_mode = "keyframe" if keyframes else "exact"
            converter = _Converter(info, short_side, stats)
            try:
                picked = _frames_at(reader, times, info, converter, keyframes)
            finally:
                container = reader.container  # it may have reopened the source
    finally:
        container.close()
        stats.elapsed_s = deadline.elapsed()
    stats.frame_times = [t for t, _ in picked]
    return np.stack([array for _, array in picked])


def _check_arguments(num_frames, mode, short_side, times, decode_mode="exact") -> None:
    """Caller mistakes are ValueErrors, raised before any input is read."""
    if decode_mode not in DECODE_MODES:
        raise ValueError(f"decode_mode must be one of {DECODE_MODES}, not {decode_mode!r}")
    if decode_mode != "exact" and times is not None:
        raise ValueError("decode_mode='keyframe' chooses within the sampling segments: give "
                         "num_frames, not times")
    if times is None and num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, not {num_frames}")
    if times is not None and len(times) < 1:
        raise ValueError("times must hold at least one time")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be positive, not {short_side}")


def load_clip(source: VideoSource, frames: int, pixels: int, mode: str = "test", rng: Rng = None,
              limits: Limits | None = None, *, info: VideoInfo | None = None,
              stats: DecodeStats | None = None, decode_mode: str = "exact") -> torch.Tensor:
    """A network-ready clip: (3, frames, pixels, pixels) float32, ImageNet-normalised.

    `decode_frames(short_side=pixels)` then `preprocess` (centre crop + normalisation)."""
    from .transforms import preprocess

    raw = decode_frames(source, frames, mode=mode, rng=rng, limits=limits, short_side=pixels,
                        info=info, stats=stats, decode_mode=decode_mode)
    return preprocess(raw, pixels)


# ------------------------------------------------------------------------------------ reading

@dataclasses.dataclass
class _Frame:
    time: float               # seconds from the first frame
    frame: av.VideoFrame


class _Reader:
    """Decoded frames of one stream in presentation order, with keyframe seeking."""

    def __init__(self, container, source: Source, info: VideoInfo, limits: Limits,
                 deadline: Deadline, stats: DecodeStats):
        self.source, self.limits, self.deadline, self.stats = source, limits, deadline, stats
        self.stream_index = info.stream_index
        self._attach(container)
        self.time_base = float(info.time_base)
        self.start_pts = info.start_pts
        self.interval = 1.0 / info.fps if info.fps > 0 else 1.0 / 25
        self.has_index = self.index is not None and len(self.index) > 0
        self.can_seek = True
        self.started = False
        self.target = -math.inf  # the time being decoded towards (for skipping pictures)
        self._frames = None
        self._lookahead: _Frame | None = None
        self._last_time: float | None = None
        self._keyframe_times: list[float] = []
        self.moved = False  # positioned by keyframe(): the next run must seek, not continue

    def _attach(self, container) -> None:
        self.container = container
        self.stream = container.streams[self.stream_index]
        self.ctx = self.stream.codec_context  # PyAV's default threading (slice threads)
        # The container's index (MP4 sample table, Matroska cues, AVI idx1); PyAV >= 17. Only
        # valid while this container is open.
        self.index = getattr(self.stream, "index_entries", None)

    # -- moving ---------------------------------------------------------------------------
    def start(self) -> None:
        """Decode from where the demuxer is (the beginning of the file)."""
        self._frames = self._decode()
        self.started = True

    def seek_to(self, t: float) -> bool:
        """Position the decoder at the keyframe at or before time t. Returns False if seeking
        did not work for this file; decoding then restarts from the beginning, without seeks."""
        back = 0.0
        for _ in range(1 + _SEEK_RETRIES):
            try:
                self.container.seek(self._pts(t - back), backward=True, any_frame=False,
                                    stream=self.stream)
            except av.FFmpegError:
                break  # raw streams cannot seek
            self.stats.seeks += 1
            self.started = True
            self._frames = self._decode()
            self._lookahead, self._last_time = None, None
            first = self.next()
            if first is not None and (first.time <= t or first.time <= 0.5 * self.interval):
                self._lookahead = first
                return True
            # Landed after the target (an inexact index, or a keyframe decoded before t but
            # shown after it), or where nothing decodes before the end (MPEG-TS seeks to a
            # timestamp, not to a keyframe): go further back.
            overshoot = first.time - t if first is not None else 0.0
            back = max(2 * back, overshoot + self.gop_estimate())
        self._restart()
        return False

    def _restart(self) -> None:
        """Decode from the beginning of a fresh container, never seeking again (a failed seek
        can leave the demuxer unusable). Frames come in time order again from time 0, so the
        caller's bookkeeping stays right."""
        self.can_seek = False
        self.container.close()
        self._attach(self.source.open())
        self._lookahead, self._last_time = None, None
        self.start()

    def keyframe_pts(self) -> list[int]:
        """Timestamps of the stream's keyframes, from its packets (demuxed, not decoded; the
        container's index is not used for this because MP4's holds decoding timestamps, which
        run ahead of the presentation times when pictures are reordered). The source is opened
        afresh afterwards, so that decoding starts from the beginning."""
        found = []
        try:
            for packet in self.container.demux(self.stream):
                self.deadline.check()
                if packet.is_keyframe and packet.pts is not None:
                    found.append(packet.pts)
        except PYAV_ERRORS as err:
            raise self._damaged(err) from None
        self.container.close()
        self._attach(self.source.open())
        return found

    def keyframe(self, pts: int) -> _Frame:
        """The keyframe shown at `pts`, decoded on its own: seek to it, decode its packet alone
        and flush it out of the decoder (one that reorders pictures holds it back)."""
        self.container.seek(pts, backward=True, any_frame=False, stream=self.stream)
        self.stats.seeks += 1
        self.ctx.flush_buffers()
        self.ctx.skip_frame = "DEFAULT"
        self._frames, self._lookahead, self._last_time = None, None, None
        self.started, self.moved = False, True
        try:
            for packet in self.container.demux(self.stream):
                self.deadline.check()
                self.stats.packets_read += 1
                if packet.pts == pts:
                    frames = packet.decode() or self.ctx.decode(None)
                    break
            else:
                raise CorruptVideo(f"the keyframe at {self._time(pts):.2f} s could not be read "
                                   f"back")
        except PYAV_ERRORS as err:
            raise self._damaged(err) from None
        finally:
            self.ctx.flush_buffers()
        if not frames:
            raise CorruptVideo(f"the keyframe at {self._time(pts):.2f} s decodes to no picture")
        self.stats.frames_decoded += len(frames)
        self.stats.keyframes_used += 1
        return self._stamp(frames[0])

    def should_seek(self, position: float, t: float) -> bool:
        """Is jumping to the keyframe before t cheaper than decoding on from `position`?"""
        if not self.can_seek or t - position <= _CONTINUE_FRAMES * self.interval:
            return False
        if self.has_index:
            entries = self.index
            i = entries.search_timestamp(self._pts(t), backward=True)
            if i < 0:
                return False
            keyframe = (entries[i].timestamp - self.start_pts) * self.time_base
            return keyframe > position + 0.5 * self.interval
        return t - position > self.gop_estimate()

    def gop_estimate(self) -> float:
        k = self._keyframe_times
        gaps = [b - a for a, b in zip(k, k[1:]) if b > a]
        return max(gaps) if gaps else _DEFAULT_GOP_S

    # -- frames ---------------------------------------------------------------------------
    def next(self) -> _Frame | None:
        """The next frame in presentation order, or None at the end of the stream."""
        if self._lookahead is not None:
            item, self._lookahead = self._lookahead, None
            return item
        if self._frames is None:
            self.start()
        return next(self._frames, None)

    def _decode(self):
        """Frames from the current demuxer position. Packets wait in a short queue so that a
        non-reference picture can be skipped when a later packet is known to be shown before
        the target: then it cannot be the frame on screen at the target, and nothing else needs
        it. (A fixed margin would be wrong for variable frame rates.)"""
        queue: collections.deque = collections.deque()
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets, None)
            except PYAV_ERRORS as err:
                raise self._damaged(err) from None
            if packet is None:
                break
            self.deadline.check()
            self.stats.packets_read += 1
            queue.append(packet)
            if len(queue) > _REORDER_WINDOW:
                yield from self._decode_packet(queue.popleft(), queue)
        while queue:  # the last packets, and the empty ones that flush the decoder
            yield from self._decode_packet(queue.popleft(), queue)

    def _decode_packet(self, packet, later):
        self.ctx.skip_frame = "NONREF" if self._hidden_before_target(packet, later) else "DEFAULT"
        try:
            frames = packet.decode()
        except PYAV_ERRORS as err:
            raise self._damaged(err) from None
        for frame in frames:
            self.stats.frames_decoded += 1
            self.deadline.check()
            yield self._stamp(frame)

    def _damaged(self, err: Exception) -> CorruptVideo:
        where = f" near {self._last_time:.2f} s" if self._last_time is not None else ""
        return CorruptVideo(f"the video data is damaged{where}: {reason(err)}")

    def _hidden_before_target(self, packet, later) -> bool:
        """Is a later packet shown after this one and still at or before the target?"""
        if packet.pts is None:
            return False
        shown, target = self._time(packet.pts), self.target + _EPS
        return shown < target and any(
            q.pts is not None and shown < self._time(q.pts) <= target for q in later)

    def _stamp(self, frame: av.VideoFrame) -> _Frame:
        if frame.pts is not None:
            t = self._time(frame.pts)
        else:  # raw streams carry no timestamps: count frames
            t = 0.0 if self._last_time is None else self._last_time + self.interval
        self._last_time = t
        if frame.key_frame:
            self._keyframe_times.append(t)
        limits = self.limits
        if limits.max_frame_area is not None and frame.width * frame.height > limits.max_frame_area:
            raise FrameTooLarge(frame.width * frame.height, limits.max_frame_area)
        if limits.max_duration_s is not None and t > limits.max_duration_s:
            raise TooLong(t, limits.max_duration_s,
                          f"the video runs past {t:.1f} s, over the limit of "
                          f"{limits.max_duration_s:g} s")
        return _Frame(t, frame)

    def _time(self, pts: int) -> float:
        return (pts - self.start_pts) * self.time_base

    def _pts(self, t: float) -> int:
        return self.start_pts + int(math.floor(max(t, 0.0) / self.time_base))


def _keyframe_targets(reader: _Reader, times: np.ndarray,
                      duration: float | None) -> tuple[np.ndarray, dict[int, int]]:
    """In each of the len(times) sampling segments of [0, duration), the keyframe nearest the
    segment's sampled time, where one lies inside it: (times with those keyframes' times,
    {target index: keyframe pts}). Containers without an index (raw streams, MPEG-TS) cannot
    seek exactly: they keep the exact times (an empty dict)."""
    if not reader.has_index or not duration:
        return times, {}
    pts = np.array(sorted(set(reader.keyframe_pts())), dtype=np.int64)
    keys = np.array([reader._time(int(p)) for p in pts])
    segment = duration / len(times)
    chosen, keyframes = times.copy(), {}
    for i, t in enumerate(times):
        inside = np.flatnonzero((keys >= i * segment - _EPS) & (keys < (i + 1) * segment - _EPS))
        if len(inside):
            j = inside[np.argmin(np.abs(keys[inside] - t))]
            chosen[i], keyframes[i] = keys[j], int(pts[j])
    return chosen, keyframes


def _frames_at(reader: _Reader, times: np.ndarray, info: VideoInfo,
               converter: "_Converter",
               keyframes: dict[int, int] | None = None) -> list[tuple[float, np.ndarray]]:
    """(time, RGB array) of the frame on screen at each time (`times` in any order). Frames are
    converted as soon as they are picked, so at most one decoded picture is held at a time.
    `keyframes`: {index: pts} of the targets that are keyframes, decoded on their own."""
    keyframes = keyframes or {}
    order = np.argsort(times, kind="stable")
    picked: list = [None] * len(times)
    last: tuple[_Frame, np.ndarray] | None = None  # consecutive targets often share a frame
    prev: _Frame | None = None     # last frame at or before the current target
    ahead: _Frame | None = None    # first frame after it
    ended = False
    for i in order:
        t = float(times[i])
        if i in keyframes:
            choice = reader.keyframe(keyframes[i])
            prev = ahead = None
            ended = False
            last = (choice, converter.convert(choice.frame))
            picked[i] = (choice.time, last[1])
            continue
        if not reader.started:
            if t > _CONTINUE_FRAMES * reader.interval or reader.moved:
                reader.seek_to(t)  # starts from the beginning if the container cannot seek
            else:
                reader.start()
        elif not ended:
            position = ahead.time if ahead is not None else prev.time if prev is not None else None
            if position is not None and position < t and reader.should_seek(position, t):
                if reader.seek_to(t):
                    prev = ahead = None
        reader.target = t
        t += _EPS  # a frame stamped exactly at t is on screen at t, whatever the float rounding
        while not ended and (ahead is None or ahead.time <= t):
            if ahead is not None:
                prev, ahead = ahead, None
            item = reader.next()
            if item is None:
                ended = True
            elif item.time <= t:
                prev = item
            else:
                ahead = item
        choice = prev if prev is not None else ahead
        if choice is None:
            raise CorruptVideo(f"no frame could be decoded at {t:.2f} s (the stream holds no "
                               f"decodable pictures)")
        if ended and ahead is None:
            _check_not_truncated(choice, t, info, reader)
        if last is None or last[0] is not choice:
            last = (choice, converter.convert(choice.frame))
        picked[i] = (choice.time, last[1])
    return picked


def _check_not_truncated(last: _Frame, t: float, info: VideoInfo, reader: _Reader) -> None:
    """t is past the last frame: fine if that frame is still on screen at t (give or take the
    slack), CorruptVideo if the data stops well before the stated duration."""
    duration = info.duration_s or 0.0
    shown_for = (last.frame.duration or 0) * reader.time_base or reader.interval
    slack = max(_TRUNCATION_SLACK_S, 3 * reader.interval, 0.1 * duration)
    if t - (last.time + shown_for) > slack:
        raise CorruptVideo(f"the video data ends at {last.time:.2f} s but the container says it "
                           f"lasts {duration:.2f} s (a frame at {t:.2f} s was asked for); the "
                           f"file looks truncated")


def _with_counted_duration(container, info: VideoInfo, limits: Limits,
                           deadline: Deadline) -> VideoInfo:
    """For streams whose container states no duration: demux (no decoding) to count frames."""
    count = 0
    try:
        for packet in container.demux(container.streams[info.stream_index]):
            deadline.check()
            if packet.size:
                count += 1
    except PYAV_ERRORS as err:
        raise CorruptVideo(f"the video data is damaged: {reason(err)}") from None
    duration = count / info.fps
    if limits.max_duration_s is not None and duration > limits.max_duration_s:
        raise TooLong(duration, limits.max_duration_s)
    return dataclasses.replace(info, duration_s=duration, num_frames=count, num_frames_exact=True)


# --------------------------------------------------------------------------------- converting

class _Converter:
    """Decoded pictures -> RGB arrays of one size, in display orientation."""

    def __init__(self, info: VideoInfo, short_side: int | None, stats: DecodeStats):
        self.info, self.short_side, self.stats = info, short_side, stats
        self.size: tuple[int, int] | None = None   # coded (width, height) of the output
        self.rotation: int | None = None
        # One scaler for the clip: `VideoFrame.reformat` builds a new one for every frame, with
        # a thread pool of its own (PyAV's default), 0.35-0.55 ms a 128 px frame against 0.04.
        self.reformatter = VideoReformatter()

    def convert(self, frame: av.VideoFrame) -> np.ndarray:
        if self.size is None:
            # The frames' own display matrix is FFmpeg's reading; the container's (or a legacy
            # tag) covers files whose frames do not carry one.
            self.rotation = rot.normalise(frame.rotation) if frame.rotation else self.info.rotation
            w, h = frame.width, frame.height
            self.size = short_side_size(w, h, self.short_side) if self.short_side else (w, h)
        self.stats.frames_converted += 1
        w, h = self.size
        shrink = w * h < frame.width * frame.height
        try:
            rgb = self.reformatter.reformat(
                frame, width=w, height=h, format="rgb24",
                interpolation="AREA" if shrink else "BILINEAR", threads=1).to_ndarray()
        except PYAV_ERRORS as err:
            raise CorruptVideo(f"a decoded frame could not be converted to RGB: "
                               f"{reason(err)}") from None
        return rot.rotate_frame(rgb, self.rotation)
