"""Tests of the video package: probe, sampling, sparse decoding, errors, limits, preprocessing.

Every video is written here with PyAV into tmp_path: tiny (64x48 or odd sizes), a few dozen
frames. Frame i is a solid grey of level `_level(i)`, so a decoded frame tells which one it is.
"""
from __future__ import annotations

import io
import random
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import video
from video import (CorruptVideo, DecodeStats, DecodeTimeout, FrameTooLarge, LimitExceeded, Limits,
                   NotAVideo, NoVideoStream, TooLarge, TooLong, VideoError, decode_frames,
                   frame_indices, load_clip, preprocess, probe, sample_times)

STEP = 6  # grey levels between consecutive frames


def _level(i: int) -> int:
    return 16 + STEP * (i % 40)


def _index(frames: np.ndarray) -> list[int]:
    """Frame indices from grey levels: (T, H, W, 3) -> [i, ...] (centre pixel, green channel)."""
    h, w = frames.shape[1] // 2, frames.shape[2] // 2
    return [int(round((int(f[h, w, 1]) - 16) / STEP)) for f in frames]


def write_video(path, n=30, codec="libx264", size=(64, 48), pix_fmt="yuv420p", fps=25,
                pts_ms=None, rotation=None, metadata=None, options=None, fmt=None,
                image=None) -> Path:
    """Encode n frames (frame i: solid grey `_level(i)`, or `image(i)`) and return the path.

    pts_ms: explicit presentation times in milliseconds (variable frame rate)."""
    width, height = size
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for key, value in (metadata or {}).items():
            stream.metadata[key] = value
        for i in range(n):
            array = image(i) if image else np.full((height, width, 3), _level(i), np.uint8)
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = pts_ms[i] if pts_ms is not None else i
            if pts_ms is not None:
                frame.time_base = Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


def write_audio(path, codec="aac", seconds=0.5, rate=44100) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "mono"
        samples = np.sin(np.arange(int(seconds * rate)) / 10).astype(np.float32)[None]
        fmt = stream.codec_context.codec.audio_formats[0].name
        chunk = stream.codec_context.frame_size or 1152
        for start in range(0, samples.shape[1], chunk):
            piece = samples[:, start:start + chunk]
            if fmt == "s16":
                piece = (piece * 20000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format=fmt,
                                               layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return Path(path)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """40 frames of H.264 in MP4, keyframe every 10 frames."""
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", n=40, options={"g": "10"})


def _middles(n_frames: int, t: int) -> list[int]:
    """Test-mode frame indices for a constant-rate video: the segment middles."""
    return [int((i + 0.5) * n_frames / t) for i in range(t)]


# ------------------------------------------------------------------------------------ probe

def test_probe_reads_metadata_without_decoding(clip):
    info = probe(clip)
    assert (info.width, info.height, info.rotation) == (64, 48, 0)
    assert info.fps == pytest.approx(25)
    assert info.duration_s == pytest.approx(40 / 25)
    assert info.num_frames == 40 and info.num_frames_exact
    assert info.codec == "h264" and "mp4" in info.container
    assert info.pix_fmt is None  # it would take decoding a picture, which opening no longer does
    assert info.size_bytes == clip.stat().st_size and not info.has_audio
    assert info.keyframes == 4 and info.keyframe_interval_s == pytest.approx(0.4)
    assert info.keyframe_max_gap_s == pytest.approx(0.4)
    with av.open(str(clip)) as c:  # the index's keyframe sizes are the keyframe packets'
        keys = [p.size for p in c.demux(c.streams.video[0]) if p.is_keyframe and p.size]
    assert info.keyframe_bytes == pytest.approx(sum(keys) / len(keys))


class Unseekable(io.RawIOBase):
    """A binary stream that cannot seek (like a socket), counting the bytes read from it."""

    def __init__(self, payload: bytes):
        self._inner, self.bytes_read = io.BytesIO(payload), 0

    def readable(self):
        return True

    def readinto(self, buffer):
        chunk = self._inner.read(len(buffer))
        buffer[:len(chunk)] = chunk
        self.bytes_read += len(chunk)
        return len(chunk)


def test_sources_path_bytes_and_file_objects_agree(clip):
    data = clip.read_bytes()
    expected = decode_frames(clip, 6)
    with open(clip, "rb") as opened:
        sources = [str(clip), data, bytearray(data), memoryview(data), io.BytesIO(data), opened]
        for source in sources:
            assert probe(source).num_frames == 40
            if hasattr(source, "seek"):
                source.seek(0)
            np.testing.assert_array_equal(decode_frames(source, 6), expected)
    assert probe(Unseekable(data)).num_frames == 40
    np.testing.assert_array_equal(decode_frames(Unseekable(data), 6), expected)


# ------------------------------------------------------------------------------- sampling

def test_sample_times_test_mode_takes_segment_middles():
    np.testing.assert_allclose(sample_times(8.0, 4), [1.0, 3.0, 5.0, 7.0])


def test_frame_indices_are_the_frames_the_times_land_on():
    assert frame_indices([0.0, 0.49, 0.5, 0.999, 1.0], 64).tolist() == [0, 31, 32, 63, 63]
    assert frame_indices(sample_times(1.0, 4), 64).tolist() == [8, 24, 40, 56]


def test_sample_times_train_mode_is_random_within_segments_and_seeded():
    a = sample_times(8.0, 4, "train", rng=np.random.default_rng(3))
    b = sample_times(8.0, 4, "train", rng=np.random.default_rng(3))
    c = sample_times(8.0, 4, "train", rng=np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert all(2 * i <= t < 2 * (i + 1) for i, t in enumerate(a))
    r1 = sample_times(8.0, 4, "train", rng=random.Random(5))
    np.testing.assert_array_equal(r1, sample_times(8.0, 4, "train", rng=random.Random(5)))
    many = np.stack([sample_times(8.0, 4, "train", rng=s) for s in range(200)])
    starts = np.arange(4) * 2.0  # the draws fill each segment
    assert (many.min(0) < starts + 0.2).all() and (many.max(0) > starts + 1.8).all()
    with pytest.raises(ValueError):
        sample_times(8.0, 4, "bogus")


def test_decode_test_mode_returns_segment_middles(clip):
    frames = decode_frames(clip, 8)
    assert frames.shape == (8, 48, 64, 3) and frames.dtype == np.uint8
    assert _index(frames) == _middles(40, 8)


def test_decode_train_mode_is_seeded_and_inside_segments(clip):
    a = decode_frames(clip, 8, "train", rng=np.random.default_rng(0))
    b = decode_frames(clip, 8, "train", rng=np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)
    for seed in range(5):
        idx = _index(decode_frames(clip, 8, "train", rng=seed))
        assert all(5 * i <= j < 5 * (i + 1) for i, j in enumerate(idx)), idx


def test_short_video_repeats_frames_in_order(tmp_path):
    path = write_video(tmp_path / "short.mp4", n=5)
    frames = decode_frames(path, 8)
    assert frames.shape[0] == 8
    assert _index(frames) == [0, 0, 1, 2, 2, 3, 4, 4]
    np.testing.assert_array_equal(frames, decode_frames(path, 8))
    assert _index(decode_frames(write_video(tmp_path / "one.mkv", n=1), 4)) == [0, 0, 0, 0]


def test_variable_frame_rate_follows_time(tmp_path):
    gaps = [0, 40, 40, 200, 40, 500, 40, 40, 300, 40, 40, 40]
    pts = np.cumsum(gaps).tolist()  # ms
    for ext in ("mp4", "mkv"):
        path = write_video(tmp_path / f"vfr.{ext}", n=len(pts), pts_ms=pts)
        times = [0.0, 0.1, 0.3, 0.5, 0.85, 1.0, 1.25, 1.4]
        stats = DecodeStats()
        got = _index(decode_frames(path, len(times), times=times, stats=stats))
        on_screen = [max(i for i, p in enumerate(pts) if p <= t * 1000) for t in times]
        assert got == on_screen, (ext, got, on_screen)
        assert stats.frame_times == pytest.approx([pts[i] / 1000 for i in on_screen])
    # A frame that stays on screen for 5.9 s: every target in that span gets it, even though
    # (B-frames) it is a non-reference picture far before the targets.
    path = write_video(tmp_path / "still.mkv", n=5, pts_ms=[0, 40, 80, 120, 6000])
    assert _index(decode_frames(path, 8)) == [3] * 8


def test_sparse_decoding_decodes_fewer_frames(tmp_path):
    path = write_video(tmp_path / "long.mp4", n=200, options={"g": "10"})
    stats = DecodeStats()
    frames = decode_frames(path, 4, stats=stats)
    assert _index(frames) == [i % 40 for i in _middles(200, 4)]
    assert stats.seeks >= 3 and stats.frames_decoded <= 4 * 10 + 4
    full = DecodeStats()  # one frame per 10 frames: a GOP each, so nearly everything is decoded
    decode_frames(path, 20, stats=full)
    assert stats.frames_decoded < full.frames_decoded / 2
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 200


def _two_digit_image(i: int) -> np.ndarray:
    """Frame i with i // 40 as the grey level of its left half and i % 40 of its right half."""
    array = np.empty((48, 64, 3), np.uint8)
    array[:, :32], array[:, 32:] = _level(i // 40), _level(i % 40)
    return array


def _two_digit_index(frame: np.ndarray) -> int:
    return (round((int(frame[24, 10, 1]) - 16) / STEP) * 40
            + round((int(frame[24, 50, 1]) - 16) / STEP))


def _every_frame(path) -> list[tuple[float, av.VideoFrame]]:
    """Ground truth: (time, frame) of every frame, decoded in order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start, time_base = stream.start_time or 0, float(stream.time_base)
        return [((f.pts - start) * time_base, f) for f in container.decode(stream)]


def _on_screen(frames: list[tuple[float, object]], t: float):
    """What `frames` ((time, x) in order) show at time t: the last one at or before t, the first
    one before it starts."""
    return ([x for t0, x in frames if t0 <= t + 1e-6] or [frames[0][1]])[-1]


@pytest.mark.parametrize("ext,options", [
    ("mp4", {"g": "12"}), ("mkv", {"g": "12"}), ("ts", {"g": "12"}),
    ("mov", {"g": "30", "bf": "3"}),  # B-frames: decode order differs from display order
])
def test_sparse_decoding_matches_full_decoding(tmp_path, ext, options):
    path = write_video(tmp_path / f"g.{ext}", n=120, image=_two_digit_image, options=options)
    truth = [(t, _two_digit_index(f.to_ndarray(format="rgb24"))) for t, f in _every_frame(path)]
    rng = np.random.default_rng(1)
    for _ in range(8):
        times = rng.uniform(-0.1, 120 / 25 + 0.1, int(rng.integers(1, 12)))
        got = [_two_digit_index(f) for f in decode_frames(path, len(times), times=times)]
        expected = [_on_screen(truth, t) for t in times]
        assert got == expected, (list(times), got, expected)


@pytest.mark.parametrize("short_side", [20, 48, 96])  # shrink (area), same, enlarge (bilinear)
def test_resized_frames_match_pyav_frame_by_frame(tmp_path, short_side):
    """The converter keeps one scaler for the clip; the reference is PyAV's `reformat` on each
    frame alone (a scaler per frame). Fresh random pictures; equal to the byte."""
    rng = np.random.default_rng()
    pictures = rng.integers(0, 256, (30, 48, 64, 3), dtype=np.uint8)
    path = write_video(tmp_path / "noise.mp4", n=30, image=lambda i: pictures[i],
                       options={"g": "10", "bf": "2"})
    times = np.sort(rng.uniform(0, 30 / 25, 6))
    got = decode_frames(path, len(times), times=times, short_side=short_side)
    width, height = round(64 * short_side / 48), short_side
    interpolation = "AREA" if short_side < 48 else "BILINEAR"
    frames = _every_frame(path)
    expected = np.stack([_on_screen(frames, t).reformat(
        width=width, height=height, format="rgb24", interpolation=interpolation).to_ndarray()
        for t in times])
    assert got.shape == expected.shape and np.array_equal(got, expected)


@pytest.mark.parametrize("ext,options", [
    ("mp4", {"g": "12"}), ("mkv", {"g": "12"}),
    ("mov", {"g": "15", "bf": "3"}),  # B-frames: the keyframe is held back by the decoder
    ("mp4", {"g": "50", "bf": "2"}),  # keyframes rarer than segments: exact frames there
])
def test_keyframe_mode_takes_the_nearest_keyframe_in_each_segment(tmp_path, ext, options):
    path = write_video(tmp_path / f"k.{ext}", n=120, image=_two_digit_image, options=options)
    truth = {round(t, 6): (_two_digit_index(f.to_ndarray(format="rgb24")), f.key_frame)
             for t, f in _every_frame(path)}
    keys = sorted(t for t, (_, key) in truth.items() if key)
    seed = int(np.random.SeedSequence().entropy % 2**32)
    rng = np.random.default_rng(seed)
    for num_frames, mode in ((8, "test"), (5, "train"), (3, "test")):
        stats = DecodeStats()
        frames = decode_frames(path, num_frames, mode=mode, rng=rng, stats=stats,
                               decode_mode="keyframe")
        segment = 120 / 25 / num_frames
        for i, (target, got) in enumerate(zip(stats.target_times, stats.frame_times)):
            inside = [k for k in keys if i * segment - 1e-6 <= k < (i + 1) * segment - 1e-6]
            if inside:   # the keyframe nearest the sampled time
                assert got == pytest.approx(min(inside, key=lambda k: abs(k - target))), seed
            else:        # the exact frame on screen at the sampled time
                assert got <= target + 1e-6 and got > target - 1 / 25 - 1e-6, seed
        # the frames are the ones on screen at those times, as exact decoding gives them
        assert [_two_digit_index(f) for f in frames] == \
            [truth[round(t, 6)][0] for t in stats.frame_times], seed
        exact = decode_frames(path, num_frames, times=stats.frame_times)
        assert np.array_equal(frames, exact), seed
        assert stats.decode_mode == "keyframe" and stats.keyframes_used >= 1
        # one picture per keyframe target, not a run from the keyframe before
        assert stats.frames_decoded < num_frames + 50 * (num_frames - stats.keyframes_used) + 1


def test_keyframe_mode_falls_back_where_it_cannot_seek_exactly(tmp_path):
    path = write_video(tmp_path / "k.ts", n=60, image=_two_digit_image, options={"g": "10"})
    stats = DecodeStats()
    frames = decode_frames(path, 4, stats=stats, decode_mode="keyframe")
    assert stats.decode_mode == "exact" and stats.keyframes_used == 0
    assert np.array_equal(frames, decode_frames(path, 4))
    with pytest.raises(ValueError, match="decode_mode"):
        decode_frames(path, 4, decode_mode="fast")
    with pytest.raises(ValueError, match="num_frames, not times"):
        decode_frames(path, 2, times=[0.1, 0.5], decode_mode="keyframe")


def test_camera_clips_have_the_asked_keyframe_spacing_and_b_frames(tmp_path):
    from video.camera import write_camera_clip

    path = write_camera_clip(tmp_path / "c.mp4", 160, 90, seconds=2.0, fps=24, gop_s=0.5)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start, tb = stream.start_time or 0, float(stream.time_base)
        keys = [(p.pts - start) * tb for p in container.demux(stream) if p.is_keyframe]
        assert stream.codec_context.has_b_frames
    assert keys == pytest.approx([0.0, 0.5, 1.0, 1.5])
    info = probe(path)
    assert (info.width, info.height, info.num_frames) == (160, 90, 48)
    stats = DecodeStats()
    decode_frames(path, 4, stats=stats, decode_mode="keyframe")
    assert stats.frame_times == pytest.approx(keys) and stats.frames_decoded == 4


# ------------------------------------------------------------------- codecs and containers

@pytest.mark.parametrize("codec,pix_fmt,ext,decoder", [
    ("libx264", "yuv420p", "mp4", "h264"), ("libvpx-vp9", "yuv420p", "webm", "vp9"),
    ("mpeg4", "yuv420p", "avi", "mpeg4"), ("mpeg4", "yuv420p", "mp4", "mpeg4"),
    ("mjpeg", "yuvj420p", "avi", "mjpeg"), ("mjpeg", "yuvj422p", "mkv", "mjpeg"),
    ("ffv1", "yuv444p", "mkv", "ffv1"), ("libx264", "yuv420p", "ts", "h264"),
])
def test_codecs_and_containers(tmp_path, codec, pix_fmt, ext, decoder):
    path = write_video(tmp_path / f"v.{ext}", n=20, codec=codec, pix_fmt=pix_fmt)
    info = probe(path)
    assert info.codec == decoder and info.duration_s == pytest.approx(0.8, abs=0.05)
    assert _index(decode_frames(path, 5)) == _middles(20, 5)
    # unsorted explicit times come back in the order asked; a probe result can be reused
    times = [0.7, 0.1, 0.45]
    assert _index(decode_frames(path, 3, times=times, info=info)) == [17, 2, 11]


@pytest.mark.parametrize("codec,pix_fmt,ext", [
    ("libx264", "yuv444p", "mp4"), ("mjpeg", "yuvj444p", "avi"), ("ffv1", "yuv420p", "mkv"),
    ("mpeg4", "yuv420p", "avi"), ("rawvideo", "rgb24", "avi"),
])
def test_odd_frame_sizes(tmp_path, codec, pix_fmt, ext):
    path = write_video(tmp_path / f"odd.{ext}", n=10, codec=codec, pix_fmt=pix_fmt, size=(63, 37))
    info = probe(path)
    assert (info.width, info.height) == (63, 37)
    frames = decode_frames(path, 4)
    assert frames.shape == (4, 37, 63, 3) and _index(frames) == _middles(10, 4)
    assert decode_frames(path, 4, short_side=20).shape == (4, 20, 34, 3)  # 63 * 20 / 37 = 34.05


def test_raw_stream_without_duration(tmp_path):
    path = write_video(tmp_path / "raw.h264", n=20, fmt="h264")
    assert probe(path).duration_s is None
    assert _index(decode_frames(path, 4)) == _middles(20, 4)


# ---------------------------------------------------------------------------------- rotation

def _corner_image(i: int) -> np.ndarray:
    """64x48 black frame with a white top-left 16x16 corner."""
    array = np.zeros((48, 64, 3), np.uint8)
    array[:16, :16] = 255
    return array


@pytest.mark.parametrize("ext,degrees", [("mp4", 90), ("mkv", 90), ("mov", 270), ("mp4", 180)])
def test_rotation_metadata(tmp_path, ext, degrees):
    path = write_video(tmp_path / f"rot.{ext}", n=4, rotation=degrees, image=_corner_image)
    info = probe(path)
    assert info.rotation == degrees
    swapped = degrees in (90, 270)
    assert (info.width, info.height) == ((48, 64) if swapped else (64, 48))
    assert (info.coded_width, info.coded_height) == (64, 48)
    frames = decode_frames(path, 2)
    assert frames.shape[1:3] == (info.height, info.width)
    expected = np.rot90(_corner_image(0), k=degrees // 90)  # counter-clockwise
    assert np.abs(frames[0].astype(int) - expected).mean() < 12


def test_legacy_rotate_tag(tmp_path):
    # FFmpeg 8 no longer turns a 'rotate' tag into a display matrix; Matroska keeps it as a tag
    # (clockwise degrees, as old FFmpeg wrote it), which probe honours.
    path = write_video(tmp_path / "tag.mkv", n=3, metadata={"rotate": "90"})
    info = probe(path)
    assert info.rotation == 270 and (info.width, info.height) == (48, 64)
    assert decode_frames(path, 2).shape == (2, 64, 48, 3)


# ------------------------------------------------------------------------------- bad inputs

def test_not_a_video(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a video\n" * 40)
    for source in (b"", b"hello world\n" * 50, np.random.default_rng(0).bytes(20_000), text,
                   io.BytesIO(b"")):
        with pytest.raises(NotAVideo):
            probe(source)
        with pytest.raises(NotAVideo):
            decode_frames(source, 4)


@pytest.mark.parametrize("codec,pix_fmt", [("png", "rgb24"), ("mjpeg", "yuvj420p")])
def test_a_still_image_is_not_a_video(codec, pix_fmt):
    """FFmpeg opens a PNG or JPEG as a one-frame stream; a video service must refuse it."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as out:
        stream = out.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = 32, 24, pix_fmt
        frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 90, np.uint8), format="rgb24")
        for packet in [*stream.encode(frame.reformat(format=pix_fmt)), *stream.encode()]:
            out.mux(packet)
    with pytest.raises(NotAVideo, match="still image"):
        probe(buf.getvalue())
    with pytest.raises(NotAVideo, match="still image"):
        decode_frames(buf.getvalue(), 4)


@pytest.mark.parametrize("codec,ext", [("aac", "mp4"), ("mp2", "mkv")])
def test_audio_only_has_no_video_stream(tmp_path, codec, ext):
    path = write_audio(tmp_path / f"audio.{ext}", codec=codec)
    with pytest.raises(NoVideoStream, match="no video stream"):
        probe(path)
    with pytest.raises(NoVideoStream):
        load_clip(path, 4, 32)


@pytest.mark.parametrize("ext", ["mp4", "mkv", "webm"])
def test_truncated_files_raise_video_errors(tmp_path, ext):
    codec = "libvpx-vp9" if ext == "webm" else "libx264"
    data = write_video(tmp_path / f"t.{ext}", n=50, codec=codec, options={"g": "10"}).read_bytes()
    with pytest.raises(CorruptVideo):
        decode_frames(data[: len(data) // 2], 8)
    for fraction in (0.02, 0.1, 0.3, 0.7, 0.95):
        try:
            frames = decode_frames(data[: int(len(data) * fraction)], 8)
        except VideoError as err:
            assert str(err)
        else:
            assert frames.shape == (8, 48, 64, 3)


def test_bit_flips_never_leak_pyav_errors(tmp_path):
    rng = np.random.default_rng(0)
    noise = lambda i: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)  # noqa: E731
    outcomes = set()
    for ext in ("mp4", "mkv", "avi"):
        codec = "mpeg4" if ext == "avi" else "libx264"
        data = write_video(tmp_path / f"b.{ext}", n=30, codec=codec, image=noise,
                           options={"g": "10"}).read_bytes()
        for trial in range(12):
            damaged = bytearray(data)
            for at in rng.integers(0, len(data), 30):
                damaged[at] ^= 1 << int(rng.integers(0, 8))
            try:
                frames = decode_frames(bytes(damaged), 6)
                assert frames.shape[0] == 6
                outcomes.add("decoded")
            except VideoError as err:  # anything else (a raw av error) fails the test
                assert str(err)
                outcomes.add(type(err).__name__)
    assert "decoded" in outcomes  # FFmpeg conceals most flips; the rest are typed errors


# ----------------------------------------------------------------------------------- limits

def test_each_limit_raises_its_error(clip):
    data = clip.read_bytes()
    with pytest.raises(TooLarge) as err:
        probe(data, Limits(max_bytes=len(data) - 1))
    assert (err.value.value, err.value.limit) == (len(data), len(data) - 1)
    with pytest.raises(TooLarge):
        probe(clip, Limits(max_bytes=100))
    with pytest.raises(TooLong) as err:
        probe(clip, Limits(max_duration_s=1.0))
    assert err.value.value == pytest.approx(1.6) and err.value.limit == 1.0
    with pytest.raises(FrameTooLarge) as err:
        decode_frames(clip, 4, limits=Limits(max_frame_area=64 * 48 - 1))
    assert err.value.value == 64 * 48
    with pytest.raises(DecodeTimeout):
        decode_frames(clip, 4, limits=Limits(max_decode_s=0.0))
    for exc in (TooLarge, TooLong, FrameTooLarge, DecodeTimeout):
        assert issubclass(exc, LimitExceeded) and issubclass(exc, VideoError)
    assert decode_frames(clip, 4, limits=Limits.unlimited()).shape == (4, 48, 64, 3)


def test_byte_limit_stops_reading_a_stream_early(clip):
    data = clip.read_bytes() + bytes(3 << 20)  # read in 1 MiB chunks: make it several
    source = Unseekable(data)
    with pytest.raises(TooLarge):
        probe(source, Limits(max_bytes=1000))
    assert source.bytes_read <= (1 << 20) + 1000 < len(data)


# ------------------------------------------------------------------------------ preprocessing

def test_preprocess_shape_dtype_and_normalisation():
    grey = np.full((3, 40, 60, 3), 128, np.uint8)
    out = preprocess(grey, 32)
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    mean, std = torch.tensor(video.IMAGENET_MEAN), torch.tensor(video.IMAGENET_STD)
    expected = (128 / 255 - mean) / std
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), expected, atol=1e-5, rtol=0)
    assert (out[:, 0] - expected.view(3, 1, 1)).abs().max() < 1e-4
    assert torch.allclose(expected, (0.5 - mean) / std, atol=0.01)
    # centre crop after a short-side resize: a bright centre column stays in the middle
    frames = np.zeros((1, 40, 80, 3), np.uint8)
    frames[:, :, 38:42] = 255
    out = preprocess(torch.from_numpy(frames), 20)
    column = out[0, 0].mean(0)
    assert column.argmax().item() in (9, 10)


def test_load_clip(clip):
    out = load_clip(clip, 4, 32)
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.float32
    level = torch.tensor([_level(i) for i in _middles(40, 4)], dtype=torch.float32)
    red = out[0, :, 16, 16] * video.IMAGENET_STD[0] + video.IMAGENET_MEAN[0]
    torch.testing.assert_close(red * 255, level, atol=3, rtol=0)
