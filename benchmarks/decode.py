"""Sparse decoding vs decoding everything, on a 60 s 1280x720 H.264 clip.

    python benchmarks/decode.py [--quick]

Writes a synthetic clip (a panning colour texture with noise, libx264 preset ultrafast, 25 fps)
into a temporary directory for each keyframe interval (GOP) measured, then times:

  sparse       video.decode_frames(path, 16): seek + decode forward to each of 16 segment middles
  sparse@224   the same with short_side=224 (what load_clip does for a 224-pixel model)
  full+rgb     the naive loader: decode every frame, convert every frame to RGB, keep the 16
  full         a stricter baseline: decode every frame, convert only the 16 sampled ones to RGB
  probe        video.probe(path) alone (container metadata; FFmpeg's own stream probing inside
               av.open decodes the first keyframe, which is most of its time)

Times are wall-clock (median over runs) and CPU time of the process (median); x_vs_naive and
x_vs_full are speedups over full+rgb and full, cpu_x_* the same from CPU times.

GOP 250 is x264's default (10 s at 25 fps: a typical ffmpeg-made file); 50 (2 s) is typical of
web video, 25 (1 s) of phone cameras. Results: benchmarks/results/decode.json (or
decode_quick.json with --quick).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import print_table, save, timeit  # noqa: E402
from video import DecodeStats, decode_frames, probe, sample_times  # noqa: E402

WIDTH, HEIGHT, FPS, FRAMES = 1280, 720, 25, 16


def write_clip(path: Path, seconds: float, gop: int | None) -> float:
    """Encode the synthetic clip; returns the seconds it took."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:2 * HEIGHT, 0:2 * WIDTH].astype(np.float32)
    texture = np.stack([127 + 127 * np.sin(xx / 57 + yy / 91),
                        127 + 127 * np.sin(xx / 23 - yy / 37),
                        127 + 127 * np.cos((xx + yy) / 71)], -1)
    texture += rng.normal(0, 12, texture.shape).astype(np.float32)
    big = av.VideoFrame.from_ndarray(np.clip(texture, 0, 255).astype(np.uint8), format="rgb24")
    planes = big.reformat(format="yuv420p").to_ndarray()  # (3H, 2W): Y, then U and V packed
    y_plane = planes[:2 * HEIGHT]
    u_plane = planes[2 * HEIGHT:2 * HEIGHT + HEIGHT // 2].reshape(HEIGHT, WIDTH)
    v_plane = planes[2 * HEIGHT + HEIGHT // 2:].reshape(HEIGHT, WIDTH)
    options = {"preset": "ultrafast"}
    if gop:
        options["g"] = str(gop)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options=options)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for i in range(int(seconds * FPS)):
            dx = 2 * int(150 + 140 * math.sin(i / 40))  # pan around the texture (even offsets)
            dy = 2 * int(90 + 85 * math.cos(i / 53))
            y = y_plane[dy:dy + HEIGHT, dx:dx + WIDTH]
            u = u_plane[dy // 2:dy // 2 + HEIGHT // 2, dx // 2:dx // 2 + WIDTH // 2]
            v = v_plane[dy // 2:dy // 2 + HEIGHT // 2, dx // 2:dx // 2 + WIDTH // 2]
            chroma = [u.reshape(HEIGHT // 4, WIDTH), v.reshape(HEIGHT // 4, WIDTH)]
            packed = np.concatenate([y, *chroma])
            frame = av.VideoFrame.from_ndarray(packed, format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return time.perf_counter() - start


def decode_all(path: Path, convert_all: bool) -> int:
    """Decode every frame and keep the 16 test-mode frames (converted to RGB)."""
    info = probe(path)
    wanted = set(np.floor(sample_times(info, FRAMES) * info.fps).astype(int).tolist())
    kept, count = [], 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for index, frame in enumerate(container.decode(stream)):
            count += 1
            if convert_all:
                rgb = frame.to_ndarray(format="rgb24")
                if index in wanted:
                    kept.append(rgb)
            elif index in wanted:
                kept.append(frame.to_ndarray(format="rgb24"))
    assert len(kept) == FRAMES, len(kept)
    return count


def measure(fn, repeats: int, warmup: int) -> dict:
    """`timeit` (wall clock) plus the median CPU time of the process per call: on a shared
    machine the CPU time is the steadier of the two."""
    cpu = []

    def timed():
        start = time.process_time()
        fn()
        cpu.append((time.process_time() - start) * 1e3)

    stats = timeit(timed, repeats, warmup)
    stats["cpu_ms"] = statistics.median(cpu[warmup:])
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 10 s clip, one GOP, fewer repeats")
    args = parser.parse_args()
    seconds = 10.0 if args.quick else 60.0
    gops = [250] if args.quick else [250, 50, 25]
    repeats = 2 if args.quick else 3

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gop in gops:
            path = Path(tmp) / f"clip_gop{gop}.mp4"
            encode_s = write_clip(path, seconds, gop)
            info = probe(path)
            print(f"wrote {seconds:.0f} s {WIDTH}x{HEIGHT} H.264 (gop {gop}, "
                  f"{info.keyframes} keyframes, {info.size_bytes / 1e6:.1f} MB) "
                  f"in {encode_s:.1f} s")
            stats, small = DecodeStats(), DecodeStats()
            decode_frames(path, FRAMES, stats=stats)
            decode_frames(path, FRAMES, short_side=224, stats=small)
            measured = {
                "sparse": (measure(lambda: decode_frames(path, FRAMES), repeats, 1),
                           stats.frames_decoded, stats.seeks),
                "sparse@224": (measure(lambda: decode_frames(path, FRAMES, short_side=224),
                                       repeats, 1), small.frames_decoded, small.seeks),
                "full+rgb": (measure(lambda: decode_all(path, True), repeats, 0),
                             info.num_frames, 0),
                "full": (measure(lambda: decode_all(path, False), repeats, 0),
                         info.num_frames, 0),
                "probe": (measure(lambda: probe(path), 20, 2), 0, 0),
            }
            naive, strict = measured["full+rgb"][0], measured["full"][0]
            for method, (timing, decoded, seeks) in measured.items():
                rows.append({
                    "gop": gop, "method": method, "median_ms": timing["median_ms"],
                    "min_ms": timing["min_ms"], "cpu_ms": timing["cpu_ms"],
                    "frames_decoded": decoded, "seeks": seeks,
                    "x_vs_naive": naive["median_ms"] / timing["median_ms"],
                    "x_vs_full": strict["median_ms"] / timing["median_ms"],
                    "cpu_x_vs_naive": naive["cpu_ms"] / timing["cpu_ms"],
                    "cpu_x_vs_full": strict["cpu_ms"] / timing["cpu_ms"],
                    "runs": timing["runs"]})
    print_table(rows, ["gop", "method", "median_ms", "cpu_ms", "frames_decoded", "seeks",
                       "x_vs_naive", "x_vs_full", "cpu_x_vs_naive", "cpu_x_vs_full"],
                title=f"decode {FRAMES} frames of a {seconds:.0f} s {WIDTH}x{HEIGHT} H.264 clip "
                      f"at {FPS} fps")
    save("decode_quick.json" if args.quick else "decode.json",
         {"clip": {"seconds": seconds, "width": WIDTH, "height": HEIGHT, "fps": FPS,
                   "codec": "libx264 ultrafast", "frames_sampled": FRAMES}, "rows": rows})


if __name__ == "__main__":
    main()
