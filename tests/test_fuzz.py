"""Property-based fuzzing of the decode path (issue 7, part 3): `probe`, `decode_frames` and
`load_clip` on mutated real videos.

Seeds are tiny real files encoded here (H.264 in MP4, VP9 in WebM, MPEG-4 Part 2 in AVI and
Matroska: 32x32, 12 frames). Hypothesis mutates them: bit flips, truncation, splicing in chunks of
another seed, inserted and deleted ranges, random bytes over the header, duplicated ranges,
"interesting" 32-bit integers (size fields), and structure-aware edits of MP4 boxes, RIFF chunks
and EBML elements (duplicate or drop one with its parents' sizes fixed, break its size, or put
an extreme value in one of its fields: sample tables, dimensions, counts, timestamps).

The property, for every mutated input and every entry point: the call either returns what it
documents (probe: a `VideoInfo` within the limits; decode_frames: (T, H, W, 3) uint8 with
T = num_frames, the short side as asked and the frame area within the limits; load_clip: a finite
(3, frames, pixels, pixels) float32 tensor) or raises a `video.VideoError` subclass (what the
server maps to 4xx); never another exception, never longer than the decoder's own time limit
(`Limits.max_decode_s`) plus a slack, never more than MEMORY_LIMIT_MIB of extra resident memory.
A hang inside FFmpeg, which no Python check can interrupt, ends the process with every thread's
traceback (faulthandler) instead of blocking CI.

CI runs a fixed, derandomized set of examples (well under 40 s on 2 busy cores). Longer local
runs, with fresh random examples each time:

    STRETCHYSNAKE_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_fuzz.py
"""
from __future__ import annotations

import dataclasses
import faulthandler
import io
import os
import resource
import struct
import time
from datetime import timedelta

import av
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, event, example, given, settings
from hypothesis import strategies as st

from video import Limits, VideoError, VideoInfo, decode_frames, load_clip, probe

# ----------------------------------------------------------------------------- budget
LONG_RUN = int(os.environ.get("STRETCHYSNAKE_FUZZ_EXAMPLES", "0") or 0)
LIMITS = Limits(max_bytes=1_000_000, max_duration_s=600.0, max_frame_area=1024 * 1024,
                max_decode_s=2.0)
# The deadline is checked between packets and frames, so one slow frame may overrun it; on a
# 2-core machine shared with other jobs a 10 ms call can also be descheduled for a while.
WALL_SLACK_S = 3.0
PROBE_WALL_S = 3.0          # probe has no deadline of its own: it reads metadata only
HANG_S = 60.0               # no single example may take this long: dump tracebacks and exit
MEMORY_LIMIT_MIB = 256      # extra resident memory over the whole run (peak and at each step)


def fuzz_settings(ci_examples: int):
    """CI: a fixed derandomized run. STRETCHYSNAKE_FUZZ_EXAMPLES=N: N random examples."""
    return settings(
        max_examples=LONG_RUN or ci_examples,
        derandomize=not LONG_RUN,
        database=None,  # no replay of earlier failures: CI depends on the code alone
        deadline=timedelta(seconds=3 * (LIMITS.max_decode_s + WALL_SLACK_S)),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        print_blob=True)


# ----------------------------------------------------------------------------- seeds
def _encode(codec: str, fmt: str, options: dict, frames: int = 12, size: int = 32,
            fps: int = 8) -> bytes:
    """A tiny real video: a moving white block on a brightening background."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), 16 + 12 * i, np.uint8)
            row = (2 * i) % (size - 6)
            image[row:row + 6, 4:10] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _make_seeds() -> dict[str, bytes]:
    # Short GOPs and B-frames so that mutations hit seeking, reordering and several keyframes.
    return {
        "mp4": _encode("libx264", "mp4", {"g": "4", "bf": "2"}),
        "webm": _encode("libvpx-vp9", "webm", {"g": "4"}),
        "avi": _encode("mpeg4", "avi", {"g": "4", "bf": "1"}),
        "mkv": _encode("mpeg4", "matroska", {"g": "4"}),
    }


SEEDS = _make_seeds()  # ~10 KB in all, ~50 ms; needed at import time by the strategies
SEED_NAMES = sorted(SEEDS)


# ----------------------------------------------------------------------------- structure
@dataclasses.dataclass(frozen=True)
class Element:
    """One box / chunk / element: bytes [start, end), its size field at [size_at, size_at +
    size_len) in the format's encoding, and the elements it sits in."""

    start: int
    end: int
    size_at: int
    size_len: int
    encoding: str            # "be32" (MP4), "le32" (RIFF), "vint" (EBML)
    parents: tuple = ()


_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"dinf", b"edts", b"udta",
                   b"mvex", b"moof", b"traf"}
_EBML_MASTERS = {0x1A45DFA3, 0x18538067, 0x114D9B74, 0x4DBB, 0x1549A966, 0x1654AE6B, 0xAE,
                 0xE0, 0x1F43B675, 0xA0, 0x1C53BB6B, 0xBB, 0xB7, 0x1254C367, 0x7373, 0x67C8,
                 0x63C0}


def _mp4_elements(data: bytes, start: int, end: int, parents: tuple, out: list) -> None:
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size < 8 or pos + size > end:  # 64-bit or to-the-end sizes: not walked into
            return
        el = Element(pos, pos + size, pos, 4, "be32", parents)
        out.append(el)
        if kind in _MP4_CONTAINERS:
            _mp4_elements(data, pos + 8, pos + size, parents + (el,), out)
        pos += size


def _riff_elements(data: bytes, start: int, end: int, parents: tuple, out: list) -> None:
    pos = start
    while pos + 8 <= end:
        kind, size = struct.unpack("<4sI", data[pos:pos + 8])
        stop = pos + 8 + size + (size & 1)  # chunks are padded to an even length
        if stop > end + 1:
            return
        el = Element(pos, min(stop, end), pos + 4, 4, "le32", parents)
        out.append(el)
        if kind in (b"RIFF", b"LIST") and size >= 4:
            _riff_elements(data, pos + 12, min(stop, end), parents + (el,), out)
        pos = stop


def _vint(data: bytes, pos: int, keep_marker: bool) -> tuple[int, int] | None:
    """EBML variable-length integer at pos -> (value, length)."""
    if pos >= len(data) or data[pos] == 0:
        return None
    length = 9 - data[pos].bit_length()
    if pos + length > len(data):
        return None
    value = int.from_bytes(data[pos:pos + length], "big")
    if not keep_marker:
        value &= (1 << (7 * length)) - 1
    return value, length


def _ebml_elements(data: bytes, start: int, end: int, parents: tuple, out: list) -> None:
    pos = start
    while pos < end:
        ident = _vint(data, pos, keep_marker=True)
        size = ident and _vint(data, pos + ident[1], keep_marker=False)
        if not size:
            return
        body = pos + ident[1] + size[1]
        if size[0] == (1 << (7 * size[1])) - 1 or body + size[0] > end:  # unknown or overlong
            return
        el = Element(pos, body + size[0], pos + ident[1], size[1], "vint", parents)
        out.append(el)
        if ident[0] in _EBML_MASTERS:
            _ebml_elements(data, body, body + size[0], parents + (el,), out)
        pos = body + size[0]


def elements(data: bytes) -> list[Element]:
    """The structure of an MP4, AVI or Matroska/WebM file, as far as it parses."""
    out: list[Element] = []
    if data[:4] == b"RIFF":
        _riff_elements(data, 0, len(data), (), out)
    elif data[:4] == b"\x1a\x45\xdf\xa3":
        _ebml_elements(data, 0, len(data), (), out)
    elif data[4:8] in (b"ftyp", b"moov", b"mdat", b"free"):
        _mp4_elements(data, 0, len(data), (), out)
    return out


def _read_size(data: bytearray, el: Element) -> int:
    raw = bytes(data[el.size_at:el.size_at + el.size_len])
    if el.encoding == "be32":
        return int.from_bytes(raw, "big")
    if el.encoding == "le32":
        return int.from_bytes(raw, "little")
    return int.from_bytes(raw, "big") & ((1 << (7 * el.size_len)) - 1)


def _write_size(data: bytearray, el: Element, value: int) -> None:
    """Rewrite a size field in place, same width; values that do not fit are left alone."""
    if el.encoding in ("be32", "le32"):
        if 0 <= value < 1 << 32:
            data[el.size_at:el.size_at + 4] = value.to_bytes(4, "big" if el.encoding == "be32"
                                                             else "little")
    elif 0 <= value < (1 << (7 * el.size_len)) - 1:
        marker = 1 << (7 * el.size_len)
        data[el.size_at:el.size_at + el.size_len] = (marker | value).to_bytes(el.size_len, "big")


def _resize_parents(data: bytearray, el: Element, delta: int) -> None:
    # Parents' size fields lie before el.start, so an edit at or after el.start leaves them put.
    for parent in el.parents:
        _write_size(data, parent, _read_size(data, parent) + delta)


# ----------------------------------------------------------------------------- mutations
INTERESTING = (0, 1, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF,
               0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)


def _at(draw, data, end_ok=False) -> int:
    return draw(st.integers(0, max(0, len(data) - (0 if end_ok else 1))))


def m_flip(draw, data: bytearray) -> bytearray:
    for _ in range(draw(st.integers(1, 8))):
        if data:
            data[_at(draw, data)] ^= draw(st.integers(1, 255))
    return data


def m_truncate(draw, data: bytearray) -> bytearray:
    return data[:_at(draw, data, end_ok=True)]


def m_splice(draw, data: bytearray) -> bytearray:
    """A chunk of another (or the same) seed over or into this one: plausible-looking data in
    the wrong place."""
    other = SEEDS[draw(st.sampled_from(SEED_NAMES))]
    i = draw(st.integers(0, len(other) - 1))
    chunk = other[i:i + draw(st.integers(1, 1024))]
    at = _at(draw, data, end_ok=True)
    if draw(st.booleans()):
        return data[:at] + chunk + data[at:]
    return data[:at] + chunk + data[at + len(chunk):]


def m_insert(draw, data: bytearray) -> bytearray:
    at = _at(draw, data, end_ok=True)
    return data[:at] + draw(st.binary(min_size=1, max_size=64)) + data[at:]


def m_delete(draw, data: bytearray) -> bytearray:
    at = _at(draw, data)
    return data[:at] + data[at + draw(st.integers(1, 256)):]


def m_header(draw, data: bytearray) -> bytearray:
    """Random bytes over the first 512 bytes: where the container's and codec's headers are."""
    junk = draw(st.binary(min_size=1, max_size=32))
    at = draw(st.integers(0, min(512, max(0, len(data) - 1))))
    return data[:at] + junk + data[at + len(junk):]


def m_duplicate(draw, data: bytearray) -> bytearray:
    """A range repeated in place (a packet or box twice, without fixing any size)."""
    at = _at(draw, data)
    piece = data[at:at + draw(st.integers(1, 512))]
    return data[:at + len(piece)] + piece + data[at + len(piece):]


def m_integer(draw, data: bytearray) -> bytearray:
    """An extreme 32-bit value, either byte order, anywhere (sizes, counts, offsets)."""
    if len(data) < 4:
        return data
    at = draw(st.integers(0, len(data) - 4))
    value = draw(st.sampled_from(INTERESTING))
    data[at:at + 4] = value.to_bytes(4, draw(st.sampled_from(["big", "little"])))
    return data


def m_structure(draw, data: bytearray) -> bytearray:
    """Duplicate or drop one box/chunk/element with its parents' sizes fixed (the file still
    parses: the damage is semantic), set its size to an extreme value, or put one in a field of
    its body (sample tables, dimensions, counts, timestamps)."""
    found = elements(bytes(data))
    if not found:
        return m_duplicate(draw, data)
    el = draw(st.sampled_from(found))
    piece = data[el.start:el.end]
    action = draw(st.sampled_from(["duplicate", "drop", "size", "field"]))
    if action == "field":  # an extreme value in a table entry or header field of this element
        fields = range(el.size_at + el.size_len, el.end - 3, 2)
        if fields:
            at = draw(st.sampled_from(fields))
            value = draw(st.sampled_from(INTERESTING))
            data[at:at + 4] = value.to_bytes(4, "little" if el.encoding == "le32" else "big")
    elif action == "duplicate":
        data = data[:el.end] + piece + data[el.end:]
        _resize_parents(data, el, len(piece))
    elif action == "drop":
        data = data[:el.start] + data[el.end:]
        _resize_parents(data, el, -len(piece))
    else:
        size = _read_size(data, el)
        _write_size(data, el, draw(st.sampled_from([0, 1, size - 1, size + 1, size * 2,
                                                    0xFFFFFF, 0xFFFFFFFF])))
    return data


MUTATIONS = {f.__name__[2:]: f for f in (m_flip, m_truncate, m_splice, m_insert, m_delete,
                                          m_header, m_duplicate, m_integer, m_structure)}


@dataclasses.dataclass(frozen=True)
class Input:
    seed: str
    mutations: tuple
    data: bytes

    def __repr__(self) -> str:  # what a failure report shows; the bytes are in the blob
        return f"Input(seed={self.seed!r}, mutations={self.mutations}, {len(self.data)} bytes)"


@st.composite
def mutated_videos(draw, max_mutations: int = 4) -> Input:
    seed = draw(st.sampled_from(SEED_NAMES))
    names = draw(st.lists(st.sampled_from(sorted(MUTATIONS)), min_size=1,
                          max_size=max_mutations))
    data = bytearray(SEEDS[seed])
    for name in names:
        data = bytearray(MUTATIONS[name](draw, data))
    return Input(seed, tuple(names), bytes(data))


@dataclasses.dataclass(frozen=True)
class Call:
    """How the decode path is called: the source kind the server (path) and training (path,
    bytes, file object) use, and the arguments a caller may pick."""

    source: str          # "bytes", "path" (".bin", as the server stores uploads), "file"
    num_frames: int
    mode: str
    rng_seed: int
    short_side: int | None
    clip_frames: int
    clip_pixels: int
    reuse_info: bool     # pass probe's VideoInfo to decode_frames, as the server does


calls = st.builds(Call, source=st.sampled_from(["bytes", "path", "file"]),
                  num_frames=st.integers(1, 16), mode=st.sampled_from(["test", "train"]),
                  rng_seed=st.integers(0, 2**16), short_side=st.sampled_from([None, 8, 17, 32]),
                  clip_frames=st.integers(1, 8), clip_pixels=st.sampled_from([8, 16, 24]),
                  reuse_info=st.booleans())


# ----------------------------------------------------------------------------- checks
def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Budget:
    """Memory at the start of a test; `check()` after every example. The peak (ru_maxrss) is
    a high-water mark of the whole process: it only sees peaks above every earlier one, so
    the current RSS is checked too (a leak shows there)."""

    def __init__(self):
        self.rss, self.peak = _rss_mib(), _peak_rss_mib()

    def check(self, what) -> None:
        grown = _rss_mib() - self.rss
        peaked = _peak_rss_mib() - self.peak
        assert grown <= MEMORY_LIMIT_MIB, f"{what}: resident memory grew by {grown:.0f} MiB"
        assert peaked <= MEMORY_LIMIT_MIB, f"{what}: peak memory grew by {peaked:.0f} MiB"


def _timed(what: str, limit_s: float, fn, *args, **kwargs):
    """fn's result or the VideoError it raised; any other exception propagates (the bug the
    fuzzer is after)."""
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except VideoError as e:
        result = e
    wall = time.perf_counter() - start
    assert wall <= limit_s, f"{what} took {wall:.2f} s (limit {limit_s:g} s): {result!r}"
    return result


class _Sources:
    """A fresh source of each kind for each call (a file object is consumed by reading)."""

    def __init__(self, data: bytes, kind: str, tmp_path):
        self.data, self.kind = data, kind
        self.path = tmp_path / "upload.bin"
        if kind == "path":
            self.path.write_bytes(data)

    def get(self):
        if self.kind == "path":
            return str(self.path)
        if self.kind == "file":
            return io.BytesIO(self.data)
        return self.data


def check_decode_path(video: Input, call: Call, tmp_path) -> dict:
    """Run probe, decode_frames and load_clip on one input and check the property; returns
    what each call gave (a type name) for the statistics."""
    decode_limit = LIMITS.max_decode_s + WALL_SLACK_S
    sources = _Sources(video.data, call.source, tmp_path)
    outcome = {}

    info = _timed("probe", PROBE_WALL_S, probe, sources.get(), LIMITS)
    outcome["probe"] = type(info).__name__
    if isinstance(info, VideoInfo):
        assert info.coded_width * info.coded_height <= LIMITS.max_frame_area
        assert info.size_bytes == len(video.data) <= LIMITS.max_bytes
        assert info.duration_s is None or info.duration_s <= LIMITS.max_duration_s
        assert info.rotation in (0, 90, 180, 270)

    frames = _timed("decode_frames", decode_limit, decode_frames, sources.get(),
                    call.num_frames, mode=call.mode, rng=call.rng_seed, limits=LIMITS,
                    short_side=call.short_side,
                    info=info if call.reuse_info and isinstance(info, VideoInfo) else None)
    outcome["decode_frames"] = type(frames).__name__
    if not isinstance(frames, VideoError):
        assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8, type(frames)
        assert frames.ndim == 4 and frames.shape[0] == call.num_frames \
            and frames.shape[3] == 3, frames.shape
        height, width = frames.shape[1:3]
        assert height >= 1 and width >= 1
        if call.short_side is not None:
            assert min(height, width) == call.short_side, (frames.shape, call.short_side)
        else:
            assert height * width <= LIMITS.max_frame_area

    clip = _timed("load_clip", decode_limit, load_clip, sources.get(), call.clip_frames,
                  call.clip_pixels, mode=call.mode, rng=call.rng_seed, limits=LIMITS)
    outcome["load_clip"] = type(clip).__name__
    if not isinstance(clip, VideoError):
        assert isinstance(clip, torch.Tensor) and clip.dtype == torch.float32
        assert tuple(clip.shape) == (3, call.clip_frames, call.clip_pixels, call.clip_pixels)
        assert bool(torch.isfinite(clip).all())
    return outcome


class _Watchdog:
    """A hang inside C code cannot be interrupted from Python: past HANG_S, print every
    thread's stack and end the process, so CI fails with a traceback rather than timing out."""

    def __enter__(self):
        faulthandler.dump_traceback_later(HANG_S, exit=True)

    def __exit__(self, *exc):
        faulthandler.cancel_dump_traceback_later()


# ----------------------------------------------------------------------------- tests
def test_seeds_are_real_videos_that_decode():
    """The unmutated seeds decode fully: the fuzzer starts from valid files."""
    for name, data in SEEDS.items():
        info = probe(data, LIMITS)
        assert (info.width, info.height, info.num_frames) == (32, 32, 12), name
        assert decode_frames(data, 12, limits=LIMITS).shape == (12, 32, 32, 3), name
        assert elements(data), f"{name}: the structure parser found nothing"


def test_structure_edits_keep_files_parseable():
    """Duplicating a box with its parents' sizes fixed leaves a file the parser walks to the
    end: the structure-aware mutation really is structure-aware."""
    for name, data in SEEDS.items():
        found = elements(data)
        el = max(found, key=lambda e: len(e.parents))
        edited = bytearray(data[:el.end] + data[el.start:el.end] + data[el.end:])
        _resize_parents(edited, el, el.end - el.start)
        assert len(elements(bytes(edited))) == len(found) + 1, name


_SEED_CALL = Call("bytes", 8, "test", 0, None, 4, 16, True)


def _stats_note(outcome: dict) -> None:
    for stage, result in outcome.items():
        event(f"{stage}: {result}")


@pytest.fixture(scope="module")
def memory_budget():
    return Budget()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")  # one file, rewritten by each example


@fuzz_settings(ci_examples=600)
@given(video=mutated_videos(), call=calls)
@example(video=Input("mp4", (), SEEDS["mp4"]), call=_SEED_CALL)
@example(video=Input("mp4", ("truncate",), SEEDS["mp4"][:len(SEEDS["mp4"]) // 2]),
         call=_SEED_CALL)
@example(video=Input("avi", ("header",), b"RIFF" + b"\xff" * 60 + SEEDS["avi"][64:]),
         call=dataclasses.replace(_SEED_CALL, source="path"))
def test_mutated_videos_decode_or_raise_video_errors(video, call, workdir, memory_budget):
    with _Watchdog():
        outcome = check_decode_path(video, call, workdir)
    _stats_note(outcome)
    memory_budget.check(video)


@fuzz_settings(ci_examples=200)
@given(data=st.one_of(st.binary(max_size=2048),
                      st.builds(lambda a, b, cut: SEEDS[a][:cut] + SEEDS[b][cut:],
                                st.sampled_from(SEED_NAMES), st.sampled_from(SEED_NAMES),
                                st.integers(0, 4096))),
       call=calls)
def test_junk_and_cross_container_splices(data, call, workdir, memory_budget):
    """Bytes that are not a video at all, and one container's head on another's tail."""
    with _Watchdog():
        outcome = check_decode_path(Input("junk", (), data), call, workdir)
    _stats_note(outcome)
    memory_budget.check(len(data))
