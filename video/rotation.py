"""Display rotation: reading it from a container without decoding, and applying it to frames.

Phones store portrait video as landscape frames plus a *display matrix* that says how to turn
them. FFmpeg reads the matrix into the stream's side data and copies it onto every decoded frame;
PyAV 18 exposes it only there, as `VideoFrame.rotation` (degrees counter-clockwise, -180..180).
It can write one (`VideoStream.set_display_rotation`), but has no reader on the stream, and the
old `rotate` metadata tag is gone from FFmpeg's MP4 demuxer. So that `probe` can report the
displayed size without decoding a frame, this module reads the matrix straight from the two
container families that carry one:

- ISO BMFF (MP4, MOV, 3GP): the 3x3 matrix of the video track's `tkhd` box, the same layout as
  FFmpeg's display matrix: rotation (counter-clockwise) = -atan2(b, a).
- Matroska/WebM: `Tracks/TrackEntry/Video/Projection/ProjectionPoseRoll`, counter-clockwise.

Both walk box/element headers only (a few small reads), never the sample tables or clusters.
All angles here are counter-clockwise degrees normalised to 0..359: the displayed picture is the
coded picture turned counter-clockwise by that angle (`np.rot90(frame, k=angle // 90)`).
Mirroring (a negative determinant, or Matroska yaw 180) is not handled.
"""
from __future__ import annotations

import math
import struct
from typing import Callable

import numpy as np

ReadAt = Callable[[int, int], bytes]  # read_at(offset, n) -> up to n bytes at offset

_MAX_ELEMENTS = 20_000  # bound on how many box/element headers one probe walks


def normalise(degrees: float) -> int:
    """Any angle -> the nearest multiple of 90 in 0..270 (frames are only turned in quarters)."""
    return int(round(degrees / 90.0)) % 4 * 90


def rotate_frame(frame: np.ndarray, degrees_ccw: int) -> np.ndarray:
    """Turn an (H, W, C) frame counter-clockwise by a multiple of 90 degrees (a view, no copy)."""
    k = normalise(degrees_ccw) // 90
    return np.rot90(frame, k=k) if k else frame


def legacy_rotate_tag(metadata: dict) -> int | None:
    """The `rotate` tag older FFmpeg versions wrote/exported (clockwise degrees), if present."""
    for key, value in metadata.items():
        if key.lower() == "rotate":
            try:
                return normalise(-float(value))
            except ValueError:
                return None
    return None


def container_rotation(read_at: ReadAt, size: int | None, format_name: str,
                       stream_id: int | None) -> int | None:
    """Counter-clockwise display rotation of the video track, or None if not found/readable."""
    try:
        if "mp4" in format_name or "mov" in format_name:
            return _mp4_rotation(read_at, size, stream_id)
        if "matroska" in format_name or "webm" in format_name:
            return _matroska_rotation(read_at, size, stream_id)
    except (struct.error, ValueError, OverflowError, OSError):
        return None
    return None


# ---------------------------------------------------------------- ISO base media file format

def _boxes(read_at: ReadAt, start: int, end: int | None):
    """Yield (type, payload_start, box_end) for the boxes in [start, end)."""
    pos, count = start, 0
    while end is None or pos + 8 <= end:
        head = read_at(pos, 16)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if size == 1:  # 64-bit size follows
            if len(head) < 16:
                return
            size = struct.unpack(">Q", head[8:16])[0]
            header = 16
        elif size == 0:  # box runs to the end of its parent
            if end is None:
                return
            size = end - pos
        if size < header:
            return
        yield kind, pos + header, pos + size
        pos += size
        count += 1
        if count > _MAX_ELEMENTS:
            return


def _find(read_at: ReadAt, start: int, end: int, kind: bytes):
    for k, payload, box_end in _boxes(read_at, start, end):
        if k == kind:
            return payload, box_end
    return None


def _mp4_rotation(read_at: ReadAt, size: int | None, stream_id: int | None) -> int | None:
    moov = next(((p, e) for k, p, e in _boxes(read_at, 0, size) if k == b"moov"), None)
    if moov is None:
        return None
    first_video = None
    for kind, payload, end in _boxes(read_at, *moov):
        if kind != b"trak":
            continue
        tkhd = _find(read_at, payload, end, b"tkhd")
        if tkhd is None or not _is_video_trak(read_at, payload, end):
            continue
        track_id, angle = _tkhd(read_at(tkhd[0], tkhd[1] - tkhd[0]))
        if stream_id is None or track_id == stream_id:
            return angle
        if first_video is None:
            first_video = angle
    return first_video


def _is_video_trak(read_at: ReadAt, start: int, end: int) -> bool:
    mdia = _find(read_at, start, end, b"mdia")
    hdlr = mdia and _find(read_at, *mdia, b"hdlr")
    # hdlr: version/flags (4), pre_defined (4), handler_type (4)
    return bool(hdlr) and read_at(hdlr[0] + 8, 4) == b"vide"


def _tkhd(box: bytes) -> tuple[int, int]:
    """(track_ID, rotation) from a tkhd payload."""
    version = box[0]
    if version == 1:  # 64-bit creation/modification times and duration
        track_id = struct.unpack(">I", box[20:24])[0]
        matrix_at = 4 + 8 + 8 + 4 + 4 + 8
    else:
        track_id = struct.unpack(">I", box[12:16])[0]
        matrix_at = 4 + 4 + 4 + 4 + 4 + 4
    matrix_at += 8 + 2 + 2 + 2 + 2  # reserved, layer, alternate_group, volume, reserved
    a, b = struct.unpack(">2i", box[matrix_at:matrix_at + 8])
    if a == 0 and b == 0:
        return track_id, 0
    return track_id, normalise(-math.degrees(math.atan2(b, a)))


# ---------------------------------------------------------------------------- Matroska/EBML

_EBML, _SEGMENT, _TRACKS, _CLUSTER = 0x1A45DFA3, 0x18538067, 0x1654AE6B, 0x1F43B675
_TRACK_ENTRY, _TRACK_NUMBER, _TRACK_TYPE, _VIDEO = 0xAE, 0xD7, 0x83, 0xE0
_PROJECTION, _POSE_ROLL = 0x7670, 0x7675


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int]:
    """An EBML variable-length integer at data[pos:]: (value, length); value -1 = unknown."""
    first = data[pos]
    if first == 0:
        raise ValueError("invalid EBML variable-length integer")
    length = 8 - first.bit_length() + 1
    value = first if keep_marker else first & (0xFF >> length)
    for i in range(1, length):
        value = (value << 8) | data[pos + i]
    if not keep_marker and value == (1 << (7 * length)) - 1:
        return -1, length
    return value, length


def _elements(read_at: ReadAt, start: int, end: int | None):
    """Yield (id, payload_start, payload_end or None if unknown size) for elements in a range."""
    pos, count = start, 0
    while end is None or pos < end:
        head = read_at(pos, 12)
        if len(head) < 2:
            return
        eid, n_id = _vint(head, 0, keep_marker=True)
        size, n_size = _vint(head, n_id, keep_marker=False)
        payload = pos + n_id + n_size
        yield eid, payload, (None if size < 0 else payload + size)
        if size < 0:
            return  # unknown size (live recordings): only the element itself can be entered
        pos = payload + size
        count += 1
        if count > _MAX_ELEMENTS:
            return


def _matroska_rotation(read_at: ReadAt, size: int | None, stream_id: int | None) -> int | None:
    segment = next(((p, e) for i, p, e in _elements(read_at, 0, size) if i == _SEGMENT), None)
    if segment is None:
        return None
    seg_start, seg_end = segment
    seg_end = seg_end if seg_end is not None else size
    for eid, payload, end in _elements(read_at, seg_start, seg_end):
        if eid == _TRACKS and end is not None:
            return _matroska_tracks(read_at, payload, end, stream_id)
        if eid == _CLUSTER:
            return None  # Tracks always precede the clusters
    return None


def _matroska_tracks(read_at: ReadAt, start: int, end: int, stream_id: int | None) -> int | None:
    first_video = None
    for eid, payload, entry_end in _elements(read_at, start, end):
        if eid != _TRACK_ENTRY or entry_end is None:
            continue
        number, is_video, roll = None, False, None
        for cid, cpay, cend in _elements(read_at, payload, entry_end):
            if cend is None:
                break
            if cid == _TRACK_NUMBER:
                number = int.from_bytes(read_at(cpay, cend - cpay), "big")
            elif cid == _TRACK_TYPE:
                is_video = int.from_bytes(read_at(cpay, cend - cpay), "big") == 1
            elif cid == _VIDEO:
                roll = _matroska_roll(read_at, cpay, cend)
        if not is_video:
            continue
        angle = None if roll is None else normalise(roll)
        if stream_id is None or number == stream_id:
            return angle
        if first_video is None:
            first_video = angle
    return first_video


def _matroska_roll(read_at: ReadAt, start: int, end: int) -> float | None:
    """ProjectionPoseRoll of a Video element; None when it has no Projection."""
    for eid, payload, pend in _elements(read_at, start, end):
        if eid == _PROJECTION and pend is not None:
            for cid, cpay, cend in _elements(read_at, payload, pend):
                if cid == _POSE_ROLL and cend is not None and cend - cpay in (4, 8):
                    raw = read_at(cpay, cend - cpay)
                    return struct.unpack(">f" if len(raw) == 4 else ">d", raw)[0]
            return 0.0
    return None
