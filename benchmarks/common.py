"""Shared helpers for the benchmark scripts: timing, machine facts, table printing, results."""
from __future__ import annotations

import datetime
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import torch

from serving.devices import cpu_model
from serving.latency import time_runs

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_DATA = ROOT / "data" / "synthetic"  # the synthetic benchmark the bundled checkpoints were trained on
SYNTHETIC_COMMAND = ["-m", "video.synthetic", "--out", str(DEFAULT_DATA), "--clips", "2000", "--seed", "0"]


def ensure_data(manifest: Path) -> Path:
    """The manifest; the default synthetic benchmark is generated when missing (about 3 minutes)."""
    if manifest.exists():
        return manifest
    if manifest.parent != DEFAULT_DATA:
        sys.exit(f"{manifest} not found")
    print(f"generating the synthetic benchmark: python {' '.join(SYNTHETIC_COMMAND)}", file=sys.stderr)
    subprocess.run([sys.executable, *SYNTHETIC_COMMAND], cwd=ROOT, check=True)
    return manifest


def camera_clip(cache: Path, width: int, height: int, fps: float, gop_s: float,
                seconds: float) -> Path:
    """A phone-like H.264 clip (`video.camera.CameraClip`) under `cache`, written the first time
    (minutes at 1080p; said on stderr) and reused after."""
    from video.camera import CameraClip

    clip = CameraClip(width, height, fps, seconds, gop_s)
    if not (Path(cache) / clip.name).exists():
        print(f"writing {clip.name} ...", file=sys.stderr, flush=True)
    return clip.write(cache)


def timeit(fn, repeats: int = 10, warmup: int = 2, min_time: float = 0.0) -> dict:
    """Run fn warmup times, then at least `repeats` times (and at least min_time seconds), with
    the project's timing loop (serving.latency.time_runs); milliseconds: min, median, p90."""
    # no cap on the runs but the time: time_runs stops at repeats and min_time
    times = sorted(time_runs(fn, warmup=warmup, min_runs=max(1, repeats), min_seconds=min_time,
                             max_runs=10 ** 9))
    return {"min_ms": times[0], "median_ms": statistics.median(times),
            "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))], "runs": len(times)}


def machine() -> dict:
    return {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}


def scan_shape_args(ap, batch: int, dim: int, length: int = 1569, state: int = 16) -> None:
    """The selective scan's shape options (--batch, --dim, --state, --length) of the scan
    benchmarks; the defaults say which model size each measures."""
    for flag, default in (("--batch", batch), ("--dim", dim), ("--state", state), ("--length", length)):
        ap.add_argument(flag, type=int, default=default)


def print_table(rows: list[dict], columns: list[str], title: str = ""):
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) and abs(v) < 1000 else (f"{v:.0f}" if isinstance(v, float) else str(v))
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def save(name: str, payload: dict, directory: Path = RESULTS) -> Path:
    """directory/name (benchmarks/results by default): the machine, then the payload."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    resolved = path.resolve()
    print(f"\nwrote {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else path}")
    return path


def gemm_rate(size: int = 2048, seconds: float = 1.0) -> float:
    """Achieved fp32 GEMM rate on this machine, in multiply-adds per second (the best of a
    large square matmul on all threads)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    stats = timeit(lambda: torch.mm(a, b, out=out), repeats=5, min_time=seconds)
    return size ** 3 / (stats["min_ms"] / 1e3)


def exp_rate(elements: int = 1 << 20, seconds: float = 1.0) -> float:
    """Achieved fp32 exp rate of torch.exp on a cache-sized tensor on all threads, per second."""
    x = -torch.rand(elements) * 8
    out = torch.empty_like(x)
    stats = timeit(lambda: torch.exp(x, out=out), repeats=20, min_time=seconds)
    return elements / (stats["min_ms"] / 1e3)
