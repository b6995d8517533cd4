"""Timing the model: run loops (`time_runs`, `time_interleaved`), their summary (p50/p95/p99),
the peak memory of a forward, and a model's forward at many configurations at once
(`measure_interleaved`, what the profiler and benchmarks/profile_check.py time)."""
from __future__ import annotations

import functools
import gc
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

Key = tuple[int, int, int]  # (frames, pixels, patch)


def time_runs(fn: Callable[[], object], *, warmup: int = 3, min_runs: int = 30,
              min_seconds: float = 2.0, max_runs: int = 1000,
              sync: Callable[[], None] = lambda: None) -> list[float]:
    """Milliseconds of each timed call of fn: after `warmup` calls, until at least `min_runs`
    calls and `min_seconds` seconds, never more than `max_runs` calls."""
    if not 1 <= min_runs <= max_runs:
        raise ValueError(f"need 1 <= min_runs <= max_runs, got {min_runs} and {max_runs}")
    for _ in range(warmup):
        fn()
    sync()
    times: list[float] = []
    gc_was_on = gc.isenabled()
    gc.disable()  # a collection in the middle of a run is noise, not the model's latency
    try:
        start = time.perf_counter()
        while len(times) < max_runs and (len(times) < min_runs
                                         or time.perf_counter() - start < min_seconds):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
    finally:
        if gc_was_on:
            gc.enable()
    return times


def summarize(times_ms: Sequence[float]) -> dict:
    """p50/p95/p99 (linear interpolation, so p50 <= p95 <= p99), mean, min, max in ms."""
    a = np.asarray(times_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    # rounding is monotone, so the order of the percentiles survives it
    return {k: round(float(v), 4) for k, v in
            (("p50", p50), ("p95", p95), ("p99", p99), ("mean", a.mean()), ("min", a.min()),
             ("max", a.max()))}


def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise OSError(f"no {field_name} in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Memory one call of fn adds at its peak over what was held before it, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return round((torch.cuda.max_memory_allocated(device) - before) / 2**20, 3)
    gc.collect()
    try:
        if not _reset_peak_rss():
            return None
        before = _proc_status_kib("VmRSS")
        fn()
        return round(max(0, _proc_status_kib("VmHWM") - before) / 1024, 3)
    except OSError:
        return None


def _input(net, key: Key, batch: int, device: torch.device) -> torch.Tensor:
    # Random input: the network has no data-dependent control flow, so values do not matter.
    frames, pixels, _ = key
    gen = torch.Generator().manual_seed(0)
    return torch.randn(batch, net.config.in_chans, frames, pixels, pixels, generator=gen).to(device)


def _sync_fn(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def time_interleaved(fns: Sequence[Callable[[], object]], *, warmup: int = 3, min_runs: int = 30,
                     min_seconds: float = 2.0, max_runs: int = 1000, per_round: int = 3,
                     sync: Callable[[], None] = lambda: None,
                     on_round: Callable[[int], None] | None = None) -> list[list[float]]:
    """Milliseconds of each timed call of every fn, measured in rounds that visit every fn in turn
    (`per_round` calls each), until each has `min_runs` calls and `min_seconds` of timed calls
    (at most `max_runs`). A shared machine's speed drifts over minutes; timing one configuration
    after another puts that drift between configurations, interleaving spreads it over all alike."""
    if not 1 <= min_runs <= max_runs:
        raise ValueError(f"need 1 <= min_runs <= max_runs, got {min_runs} and {max_runs}")
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]

    def done(i: int) -> bool:
        return len(times[i]) >= max_runs or (len(times[i]) >= min_runs and sum(times[i]) >= min_seconds * 1e3)

    gc_was_on = gc.isenabled()
    gc.disable()  # a collection in the middle of a run is noise, not the model's latency
    try:
        rounds = 0
        while not all(done(i) for i in range(len(fns))):
            for i, fn in enumerate(fns):
                for _ in range(per_round):
                    if done(i):
                        break
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    times[i].append((time.perf_counter() - t0) * 1e3)
            rounds += 1
            if on_round is not None:
                on_round(sum(done(i) for i in range(len(fns))))
    finally:
        if gc_was_on:
            gc.enable()
    return times


def measure_interleaved(net, keys: Sequence[Key], batch: int, device: torch.device, *, warmup: int = 3,
                        min_runs: int = 30, min_seconds: float = 2.0, max_runs: int = 1000,
                        on_round: Callable[[int], None] | None = None) -> list[dict]:
    """The model's batch-`batch` forward at each configuration, the runs interleaved
    (time_interleaved) so that a machine that slows down meanwhile slows them all alike."""
    inputs = [(_input(net, key, batch, device), key[2]) for key in keys]
    with torch.inference_mode():
        runs = [functools.partial(net, x, patch=patch) for x, patch in inputs]
        times = time_interleaved(runs, warmup=max(1, warmup), min_runs=min_runs, min_seconds=min_seconds,
                                 max_runs=max_runs, sync=_sync_fn(device), on_round=on_round)
        memory = [peak_memory_mb(run, device) for run in runs]
    return [{"latency_ms": summarize(t), "runs": len(t), "peak_memory_mb": m} for t, m in zip(times, memory)]
