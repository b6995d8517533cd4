"""Valid and hostile uploads, made on the spot with PyAV (nothing is committed), each with the
answer a server with the default limits owes it (issue 7).

    corpus = build()                  # Corpus(cases=[Case, ...], skipped=[...]); a few seconds
    for case in corpus.cases:
        case.name, case.data          # file name (extension included) and bytes
        case.status, case.code        # HTTP status and error code owed (tuples: any of these)
        case.match                    # a piece of the error message, or None
    python -m video.corpus --out DIR  # the same files on disk, and a table of what each is

Valid (200): every container/codec pair this FFmpeg build can write (absent encoders are
listed in `skipped`), 10-bit and 4:4:4 pixel formats, odd, tiny, extreme and DCI-4K sizes, one
frame, variable frame rate, rotation, audio beside the video, a raw H.264 stream, and a header
that claims 8K frames for a 64x48 stream (FFmpeg takes the size from the bitstream).

Hostile: empty, text, HTML, JSON, random bytes and zeros named .mp4, PNG and JPEG stills,
truncated and bit-flipped files, a damaged MP4 header, audio-only files, a container without
streams, an unknown codec, real 8K frames, a 10-hour duration in the header (MP4 sample table,
Matroska tags) and by timestamps (two frames 10 hours apart), a raw stream whose frames grow
to 4096x4096 mid-way, and a decompression bomb: one 64x48 stream beside 64 streams of
4096x4096 H.264 (~0.5 MB) that FFmpeg decodes while *opening* the file, before any limit can
be checked (`BOMB_STREAMS`; only an isolated decoder, `video.isolation`, bounds it: `bounded`).

Statuses follow serving/errors.py: 400 damaged, 413 over a limit, 415 not a video. Everything
is small (64x48, 16 frames at 16 fps) except the 4K, 8K and bomb files.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import json
import os
import struct
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SIZE = (64, 48)         # width, height of the ordinary clips
FRAMES = 16
FPS = 16
BOMB_STREAMS = 64       # 4096x4096 streams in the bomb (7 KB each; ~0.1 s and 20-75 MB to open)
BOMB_SIDE = 4096


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    status: int | tuple           # what a server with the default limits answers
    code: str | tuple | None = None
    match: str | None = None      # a piece of the error message
    note: str = ""
    bounded: bool = False         # needs decoding in a killable, memory-limited process

    @property
    def valid(self) -> bool:
        return self.status == 200

    def allows(self, status: int, code: str | None) -> bool:
        statuses = self.status if isinstance(self.status, tuple) else (self.status,)
        codes = self.code if isinstance(self.code, tuple) else (self.code,)
        return status in statuses and (status == 200 or code in codes)


@dataclasses.dataclass
class Corpus:
    cases: list
    skipped: list        # "name: why" for what this FFmpeg build cannot write
    seconds: float = 0.0

    def __getitem__(self, name: str) -> Case:
        for c in self.cases:
            if c.name == name:
                return c
        raise KeyError(name)


# ----------------------------------------------------------------------------- encoding
def can_encode(codec: str) -> bool:
    """Can this FFmpeg build encode `codec`?"""
    try:
        return av.codec.Codec(codec, "w") is not None
    except Exception:  # noqa: BLE001 - unknown to this build
        return False


def can_decode(codec: str) -> bool:
    """Can this FFmpeg build decode `codec`?"""
    try:
        return av.codec.Codec(codec, "r") is not None
    except Exception:  # noqa: BLE001
        return False


def _picture(i: int, width: int, height: int) -> np.ndarray:
    """A gradient with a bright square moving across it (frame i)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (x * 255 // max(1, width - 1)).astype(np.uint8)
    img[..., 1] = (y * 255 // max(1, height - 1)).astype(np.uint8)
    img[..., 2] = (40 + 9 * i) % 256
    side = max(1, min(width, height) // 4)
    left = (i * max(1, width // FRAMES)) % max(1, width - side + 1)
    top = (height - side) // 2
    img[top:top + side, left:left + side] = 250
    return img


def encode(codec: str, fmt: str, *, size=SIZE, frames: int = FRAMES, pix_fmt: str = "yuv420p",
           fps: int = FPS, options: dict | None = None, pts_ms=None, rotation: int | None = None,
           audio: str | None = None, flat: bool = False) -> bytes:
    """Encode `frames` pictures with `codec` into container `fmt`, in memory."""
    width, height = size
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        sound = _audio_stream(out, audio) if audio else None
        still = np.full((height, width, 3), 100, np.uint8) if flat else None
        for i in range(frames):
            rgb = still if flat else _picture(i, width, height)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pix_fmt != "rgb24":
                frame = frame.reformat(format=pix_fmt)
            frame.pts = pts_ms[i] if pts_ms is not None else i
            if pts_ms is not None:
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if sound is not None:
            _write_audio(out, sound, frames / fps)
    return buf.getvalue()


def _audio_stream(out, codec: str):
    stream = out.add_stream(codec, rate=48000 if codec == "libopus" else 44100)
    stream.layout = "mono"
    return stream


def _write_audio(out, stream, seconds: float) -> None:
    rate = stream.codec_context.sample_rate
    fmt = stream.codec_context.codec.audio_formats[0].name  # mono: planar and packed alike
    wave = 0.3 * np.sin(np.arange(int(seconds * rate)) * 2 * np.pi * 440 / rate)
    scale, dtype = {"s16": (32000, np.int16), "s32": (2e9, np.int32),
                    "dbl": (1, np.float64)}.get(fmt.rstrip("p"), (1, np.float32))
    samples = (wave * scale).astype(dtype)[None]
    chunk = stream.codec_context.frame_size or 1024
    for start in range(0, samples.shape[1], chunk):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start:start + chunk]),
                                           format=fmt, layout="mono")
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def audio_only(codec: str, fmt: str, seconds: float = 0.5) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        _write_audio(out, _audio_stream(out, codec), seconds)
    return buf.getvalue()


def still_image(codec: str, pix_fmt: str) -> bytes:
    """One picture in FFmpeg's image pipe: a PNG or JPEG file."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as out:
        stream = out.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = 96, 64, pix_fmt
        frame = av.VideoFrame.from_ndarray(_picture(3, 96, 64), format="rgb24")
        for packet in [*stream.encode(frame.reformat(format=pix_fmt)), *stream.encode()]:
            out.mux(packet)
    return buf.getvalue()


@functools.lru_cache(maxsize=4)
def _h264(size, frames: int, params: str = "", flat: bool = False) -> bytes:
    """Annex-B H.264 (no container), x264 ultrafast."""
    return encode("libx264", "h264", size=size, frames=frames, flat=flat,
                  options={"preset": "ultrafast", "tune": "zerolatency",
                           **({"x264-params": params} if params else {})})


def remux_streams(raw_streams: list, fps: int = FPS, fmt: str = "matroska") -> bytes:
    """Annex-B H.264 streams -> one file (`fmt`: a muxer) with a video stream each (no
    re-encoding).
    Equal inputs are parsed once (opening one already decodes some of its frames)."""
    parsed: dict = {}
    inputs = []
    try:
        for data in raw_streams:
            if data not in parsed:
                c = av.open(io.BytesIO(data), format="h264")
                packets = [(bytes(q), q.is_keyframe)
                           for q in c.demux(c.streams.video[0]) if q.size]
                parsed[data] = (c, packets)
                inputs.append(c)
        buf = io.BytesIO()
        with av.open(buf, "w", format=fmt) as out:
            streams = [out.add_stream_from_template(parsed[d][0].streams.video[0])
                       for d in raw_streams]
            longest = max(len(parsed[d][1]) for d in raw_streams)
            for i in range(longest):  # interleaved by time, as a muxer would
                for data, stream in zip(raw_streams, streams):
                    packets = parsed[data][1]
                    if i < len(packets):
                        payload, key = packets[i]
                        packet = av.Packet(payload)
                        packet.stream, packet.time_base = stream, Fraction(1, fps)
                        packet.pts = packet.dts = i
                        packet.duration, packet.is_keyframe = 1, key
                        out.mux(packet)
        return buf.getvalue()
    finally:
        for c in inputs:
            c.close()


# ------------------------------------------------------------------------ header surgery
def _mp4_box(data: bytes, kind: bytes, start: int = 0) -> int:
    """Offset of the first box of `kind` at or after `start` (a plain search: the ordinary
    files here hold each box type once)."""
    at = data.find(kind, start)
    if at < 4:
        raise ValueError(f"no {kind!r} box")
    return at - 4


def mp4_claiming_hours(mp4: bytes, hours: float = 10) -> bytes:
    """The MP4 with its durations (movie, track, media, edit list) and its sample table
    (stts: FFmpeg trusts it over the headers) saying `hours` hours; the data is unchanged."""
    d = bytearray(mp4)
    seconds = int(hours * 3600)
    mvhd = _mp4_box(d, b"mvhd")
    movie_scale = struct.unpack(">I", d[mvhd + 20:mvhd + 24])[0]
    d[mvhd + 24:mvhd + 28] = struct.pack(">I", seconds * movie_scale)
    tkhd = _mp4_box(d, b"tkhd")
    d[tkhd + 28:tkhd + 32] = struct.pack(">I", seconds * movie_scale)
    mdhd = _mp4_box(d, b"mdhd")
    media_scale = struct.unpack(">I", d[mdhd + 20:mdhd + 24])[0]
    d[mdhd + 24:mdhd + 28] = struct.pack(">I", seconds * media_scale)
    if b"elst" in d:
        elst = _mp4_box(d, b"elst")
        d[elst + 16:elst + 20] = struct.pack(">I", seconds * movie_scale)
    stts = _mp4_box(d, b"stts")
    count = struct.unpack(">I", d[stts + 16:stts + 20])[0]
    d[stts + 20:stts + 24] = struct.pack(">I", seconds * media_scale // count)
    return bytes(d)


def mp4_claiming_size(mp4: bytes, width: int, height: int) -> bytes:
    """The MP4 with its track header and avc1 sample entry claiming width x height."""
    d = bytearray(mp4)
    tkhd = _mp4_box(d, b"tkhd")
    end = tkhd + struct.unpack(">I", d[tkhd:tkhd + 4])[0]
    d[end - 8:end] = struct.pack(">II", width << 16, height << 16)
    avc1 = _mp4_box(d, b"avc1")
    d[avc1 + 32:avc1 + 36] = struct.pack(">HH", width, height)
    return bytes(d)


def mp4_without_streams(mp4: bytes) -> bytes:
    """ftyp + a moov holding only its movie header: a valid MP4 with no track at all."""
    ftyp = _mp4_box(mp4, b"ftyp")
    ftyp_end = ftyp + struct.unpack(">I", mp4[ftyp:ftyp + 4])[0]
    mvhd = _mp4_box(mp4, b"mvhd")
    mvhd_box = mp4[mvhd:mvhd + struct.unpack(">I", mp4[mvhd:mvhd + 4])[0]]
    return mp4[ftyp:ftyp_end] + struct.pack(">I4s", 8 + len(mvhd_box), b"moov") + mvhd_box


def mkv_claiming_hours(mkv: bytes, hours: int = 10) -> bytes:
    """The Matroska file with its segment duration and its track's DURATION tag (which FFmpeg
    prefers) saying `hours` hours."""
    d = bytearray(mkv)
    at = d.find(b"\x44\x89\x88")  # Duration, an 8-byte float in TimecodeScale units (1 ms)
    if at >= 0:
        d[at + 3:at + 11] = struct.pack(">d", hours * 3600 * 1000.0)
    tag = d.find(b"DURATION")
    clock = d.find(b"00:", tag)
    if tag < 0 or clock < 0:
        raise ValueError("no DURATION tag")
    d[clock:clock + 18] = f"{hours:02d}:00:00.000000000".encode()
    return bytes(d)


def bit_flips(data: bytes, every: int = 400, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    flipped = bytearray(data)
    for pos in rng.choice(len(flipped), max(8, len(flipped) // every), replace=False):
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
    return bytes(flipped)


# ------------------------------------------------------------------------------- the cases
# (name, codec, container, pix_fmt, extra encode() arguments, decoder needed)
_VALID = [
    ("h264.mp4", "libx264", "mp4", "yuv420p", {}, "h264"),
    ("h264_bframes.mov", "libx264", "mov", "yuv420p", {"options": {"bf": "3", "g": "8"}}, "h264"),
    ("h264.mkv", "libx264", "matroska", "yuv420p", {}, "h264"),
    ("h264.ts", "libx264", "mpegts", "yuv420p", {}, "h264"),
    ("h264.flv", "libx264", "flv", "yuv420p", {}, "h264"),
    ("h264_raw.h264", "libx264", "h264", "yuv420p", {}, "h264"),
    ("h264_10bit.mp4", "libx264", "mp4", "yuv420p10le", {}, "h264"),
    ("h264_444.mp4", "libx264", "mp4", "yuv444p", {}, "h264"),
    ("h264_422.mkv", "libx264", "matroska", "yuv422p", {}, "h264"),
    ("hevc.mp4", "libx265", "mp4", "yuv420p", {"options": {"x265-params": "log-level=error"}},
     "hevc"),
    ("hevc_10bit.mkv", "libx265", "matroska", "yuv420p10le",
     {"options": {"x265-params": "log-level=error"}}, "hevc"),
    ("vp9.webm", "libvpx-vp9", "webm", "yuv420p",
     {"options": {"deadline": "realtime", "cpu-used": "8"}}, "vp9"),
    ("vp9_444.webm", "libvpx-vp9", "webm", "yuv444p",
     {"options": {"deadline": "realtime", "cpu-used": "8"}}, "vp9"),
    ("vp8.webm", "libvpx", "webm", "yuv420p", {"options": {"deadline": "realtime"}}, "vp8"),
    ("av1.mkv", "libsvtav1", "matroska", "yuv420p", {"size": (64, 64), "options": {"preset": "12"}},
     "libdav1d"),
    ("av1_10bit.webm", "libsvtav1", "webm", "yuv420p10le",
     {"size": (64, 64), "options": {"preset": "12"}}, "libdav1d"),
    ("mpeg4.avi", "mpeg4", "avi", "yuv420p", {}, "mpeg4"),
    ("mpeg4.mp4", "mpeg4", "mp4", "yuv420p", {}, "mpeg4"),
    ("mpeg2.ts", "mpeg2video", "mpegts", "yuv420p", {"fps": 25}, "mpeg2video"),
    ("mpeg1.mpg", "mpeg1video", "mpeg", "yuv420p", {"fps": 25}, "mpeg1video"),
    ("mjpeg.avi", "mjpeg", "avi", "yuvj420p", {}, "mjpeg"),
    ("mjpeg_444.mkv", "mjpeg", "matroska", "yuvj444p", {}, "mjpeg"),
    ("ffv1.mkv", "ffv1", "matroska", "yuv420p", {}, "ffv1"),
    ("ffv1_444_16bit.mkv", "ffv1", "matroska", "yuv444p16le", {}, "ffv1"),
    ("prores.mov", "prores_ks", "mov", "yuv422p10le", {}, "prores"),
    ("prores_4444_alpha.mov", "prores_ks", "mov", "yuva444p10le", {}, "prores"),
    ("png.mov", "png", "mov", "rgb24", {}, "png"),
    ("qtrle.mov", "qtrle", "mov", "rgb24", {}, "qtrle"),
    ("huffyuv.avi", "huffyuv", "avi", "yuv422p", {}, "huffyuv"),
    ("utvideo.avi", "utvideo", "avi", "yuv420p", {}, "utvideo"),
    ("rawvideo.avi", "rawvideo", "avi", "rgb24", {}, "rawvideo"),
    ("flv1.flv", "flv", "flv", "yuv420p", {}, "flv"),
    ("h263.3gp", "h263", "3gp", "yuv420p", {"size": (128, 96)}, "h263"),
    ("msmpeg4.avi", "msmpeg4", "avi", "yuv420p", {}, "msmpeg4"),
    ("wmv2.asf", "wmv2", "asf", "yuv420p", {}, "wmv2"),
    ("cinepak.avi", "cinepak", "avi", "rgb24", {}, "cinepak"),
    ("gif_animated.gif", "gif", "gif", "rgb8", {}, "gif"),
    # sizes and shapes
    ("odd_63x37.mkv", "ffv1", "matroska", "yuv420p", {"size": (63, 37)}, "ffv1"),
    ("odd_65x33_h264_444.mp4", "libx264", "mp4", "yuv444p", {"size": (65, 33)}, "h264"),
    ("tiny_2x2.mkv", "ffv1", "matroska", "yuv444p", {"size": (2, 2)}, "ffv1"),
    ("tiny_16x16.mp4", "libx264", "mp4", "yuv420p", {"size": (16, 16)}, "h264"),
    ("wide_640x16.mp4", "libx264", "mp4", "yuv420p", {"size": (640, 16)}, "h264"),
    ("tall_16x480.mp4", "libx264", "mp4", "yuv420p", {"size": (16, 480)}, "h264"),
    ("hd_1280x720.mp4", "libx264", "mp4", "yuv420p",
     {"size": (1280, 720), "frames": 8, "options": {"preset": "ultrafast"}}, "h264"),
    ("dci4k_4096x2160.mp4", "libx264", "mp4", "yuv420p",
     {"size": (4096, 2160), "frames": 3, "flat": True, "options": {"preset": "ultrafast"}},
     "h264"),
    # time
    ("one_frame.mp4", "libx264", "mp4", "yuv420p", {"frames": 1}, "h264"),
    ("vfr.mkv", "libx264", "matroska", "yuv420p",
     {"frames": 12, "pts_ms": [0, 40, 80, 280, 320, 820, 860, 900, 1200, 1240, 1280, 1320]},
     "h264"),
    ("vfr.mp4", "libx264", "mp4", "yuv420p",
     {"frames": 12, "pts_ms": [0, 40, 80, 280, 320, 820, 860, 900, 1200, 1240, 1280, 1320]},
     "h264"),
    ("rotated_90.mp4", "libx264", "mp4", "yuv420p", {"rotation": 90}, "h264"),
    ("rotated_270.mov", "libx264", "mov", "yuv420p", {"rotation": 270}, "h264"),
    ("with_audio.mp4", "libx264", "mp4", "yuv420p", {"audio": "aac"}, "h264"),
    ("with_audio.mkv", "libvpx-vp9", "matroska", "yuv420p",
     {"audio": "libopus", "options": {"deadline": "realtime", "cpu-used": "8"}}, "vp9"),
]


def valid_cases(skipped: list) -> list[Case]:
    cases = []
    for name, codec, fmt, pix_fmt, extra, decoder in _VALID:
        audio = extra.get("audio")
        missing = [c for c in (codec, audio) if c and not can_encode(c)]
        if missing or not can_decode(decoder):
            what = f"encoder {missing[0]}" if missing else f"decoder {decoder}"
            skipped.append(f"{name}: no {what}")
            continue
        if codec == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints a banner per encoder otherwise
        try:
            data = encode(codec, fmt, pix_fmt=pix_fmt, **extra)
        except Exception as e:  # noqa: BLE001 - an encoder that refuses these settings here
            skipped.append(f"{name}: {codec} failed ({e})")
            continue
        cases.append(Case(name, data, 200, note=f"{codec} {pix_fmt} in {fmt}"))
    if can_encode("libx264"):
        base = encode("libx264", "mp4")
        cases.append(Case("header_claims_8k.mp4", mp4_claiming_size(base, 7680, 4320), 200,
                          note="tkhd and avc1 say 7680x4320; the bitstream (which FFmpeg "
                               "believes) is 64x48"))
    return cases


def hostile_cases(skipped: list) -> list[Case]:
    rng = np.random.default_rng(0)
    clip = encode("libx264", "mp4", options={"g": "8"})
    mkv = encode("libx264", "matroska", options={"g": "8"})
    webm = encode("libvpx-vp9", "webm", options={"deadline": "realtime", "cpu-used": "8"})
    not_video, damaged, no_stream = ("not_a_video",), ("corrupt_video",), ("no_video_stream",)
    cases = [
        Case("empty.mp4", b"", 400, "empty_upload", "empty"),
        Case("notes.mp4", b"this is a text file, not a video\n" * 40, 415, not_video,
             "not a video"),
        Case("page.mp4", b"<!DOCTYPE html><html><head><title>clip</title></head><body>"
             + b"<p>not a video</p>" * 60 + b"</body></html>\n", 415, not_video, "not a video"),
        Case("data.mp4", json.dumps({"video": "http://example.com/clip.mp4",
                                     "frames": list(range(200))}).encode(), 415, not_video,
             "not a video"),
        Case("random.mp4", rng.bytes(64 << 10), 415, not_video, "not a video"),
        Case("zeros.mp4", bytes(64 << 10), 415, not_video, "not a video"),
        Case("image.png.mp4", still_image("png", "rgb24"), 415, not_video, "still image"),
        Case("photo.jpg.mp4", still_image("mjpeg", "yuvj420p"), 415, not_video, "still image"),
        Case("truncated_half.mp4", clip[:len(clip) // 2], 400, damaged, "truncated"),
        Case("truncated_head.mp4", clip[:64], 400, damaged, "truncated or damaged"),
        Case("truncated_half.mkv", mkv[:len(mkv) // 2], 400, damaged, "could be decoded"),
        Case("truncated_half.webm", webm[:len(webm) // 2], 400, damaged, "truncated"),
        Case("moov_damaged.mp4", clip.replace(b"moov", b"moox", 1), 400, damaged,
             "starts like an MP4"),
        Case("bit_flips.mp4", bit_flips(clip), (200, 400), damaged,
             note="FFmpeg conceals some flips (200), others are damage (400)"),
        Case("bit_flips.mkv", bit_flips(mkv, seed=8), (200, 400), damaged,
             note="FFmpeg conceals some flips (200), others are damage (400)"),
        Case("audio_only.m4a", audio_only("aac", "mp4"), 415, no_stream, "no video stream"),
        Case("audio_only.mka", audio_only("mp2", "matroska"), 415, no_stream, "no video stream"),
        Case("audio_only.wav", audio_only("pcm_s16le", "wav"), 415, no_stream,
             "no video stream"),
        Case("audio_only.flac", audio_only("flac", "flac"), 415, no_stream, "no video stream"),
        Case("no_streams.mp4", mp4_without_streams(clip), 415, no_stream, "no streams"),
        Case("unknown_codec.mkv", mkv.replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/QQQ/QQQ", 1), 415,
             "unsupported_codec", "no decoder"),
        Case("hours_10_header.mp4", mp4_claiming_hours(clip), 413, "too_long",
             "duration is 36000 s"),
        Case("hours_10_header.mkv", mkv_claiming_hours(mkv), 413, "too_long",
             "duration is 36000 s"),
        Case("hours_10_two_frames.mkv",
             encode("libx264", "matroska", frames=2, pts_ms=[0, 36_000_000]), 413, "too_long",
             "duration is 36000"),
    ]
    if can_encode("libmp3lame"):
        cases.append(Case("audio_only.mp3", audio_only("libmp3lame", "mp3"), 415, no_stream,
                          "no video stream"))
    else:
        skipped.append("audio_only.mp3: no encoder libmp3lame")
    # Big pictures, tiny files: flat pictures cost x264 a few bytes per macroblock.
    cases.append(Case("frames_8k_7680x4320.mp4",
                      encode("libx264", "mp4", size=(7680, 4320), frames=2, flat=True,
                             options={"preset": "ultrafast", "x264-params": "cabac=1"}),
                      413, "frame_too_large", "7680x4320"))
    cases.append(Case(f"grows_to_{BOMB_SIDE}x{BOMB_SIDE}.h264", _small() + _huge(), 413,
                      "frame_too_large", "over the limit",
                      note=f"64x48, then a new SPS of {BOMB_SIDE}x{BOMB_SIDE} mid-stream"))
    cases.append(Case(f"bomb_{BOMB_STREAMS}x{BOMB_SIDE}.flv", bomb(), 413,
                      ("decode_timeout", "decode_memory"), None, bounded=True,
                      note=f"64x48 stream + {BOMB_STREAMS} streams of {BOMB_SIDE}x{BOMB_SIDE}: "
                           "opening it decodes them all"))
    cases.append(Case(f"streams_{BOMB_STREAMS}x{BOMB_SIDE}.mkv", bomb(fmt="matroska"), 200,
                      note="the bomb's streams in Matroska, which lists them before opening "
                           "decodes anything: video.source tells those decoders to skip"))
    return cases


def _small() -> bytes:
    return _h264(SIZE, 10)


def _huge() -> bytes:
    # flat pictures, CABAC, one reference: ~7.6 KB for 8 frames of 4096x4096
    return _h264((BOMB_SIDE, BOMB_SIDE), 8, "cabac=1:ref=1:bframes=0:keyint=1000:scenecut=0",
                 flat=True)


def bomb(streams: int = BOMB_STREAMS, fmt: str = "flv") -> bytes:
    """The decompression bomb: a 64x48 stream (the one a server picks) and `streams` copies of
    a 4096x4096 H.264 stream. Opening it (FFmpeg's find_stream_info) decodes the first frames of
    every stream and keeps each stream's decoder: ~0.1 s and 20-75 MB of RSS (~70 MB of address
    space) per stream on the development machine, before `probe` can check anything. In FLV
    (like MPEG-PS) the streams appear only as their packets are read, during that same call,
    so their decoders cannot be told beforehand to skip (as video.source does where the
    container lists its streams up front)."""
    return remux_streams([_small()] + [_huge()] * streams, fmt=fmt)


def build() -> Corpus:
    t0 = time.perf_counter()
    skipped: list = []
    cases = valid_cases(skipped) + hostile_cases(skipped)
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return Corpus(cases, skipped, time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="directory for the files")
    args = ap.parse_args(argv)
    corpus = build()
    args.out.mkdir(parents=True, exist_ok=True)
    for c in corpus.cases:
        (args.out / c.name).write_bytes(c.data)
        code = c.code if not isinstance(c.code, tuple) else "|".join(c.code)
        print(f"{c.name:34s} {len(c.data):>9,d} B  {c.status!s:10s} {code or '':30s} {c.note}")
    for s in corpus.skipped:
        print("skipped:", s)
    print(f"{len(corpus.cases)} files in {corpus.seconds:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
