"""The load generator's side of benchmarks/serve_load.py: budgets, the clips uploaded (generated,
from a manifest, hostile), one request and its result as the client sees it, and closed-loop
clients on threads with a progress line."""
from __future__ import annotations

import dataclasses
import random
import threading
import time
from pathlib import Path

import httpx

from common.progress import Progress


DEFAULT_BUDGETS = "ms:40,ms:80,ms:200,gflops:0.1,none"
DEFAULT_MIX = "ms:60,ms:100,ms:150,ms:250,ms:500,none"
HOSTILE_KINDS = ("empty", "text", "truncated", "bitflip", "png")
BUDGET_KEYS = {"ms": "budget_ms", "gflops": "budget_gflops"}


@dataclasses.dataclass(frozen=True)
class Budget:
    name: str
    params: dict          # query parameters
    ms: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        text = text.strip()
        if text.lower() == "none":
            return cls("none", {})
        params, ms = {}, None
        for part in text.split("+"):
            kind, sep, value = part.partition(":")
            kind = kind.strip().lower()
            if not sep or kind not in BUDGET_KEYS:
                raise ValueError(f"budget {text!r}: expected ms:N, gflops:X, none, or two "
                                 "joined with '+'")
            try:
                v = float(value)
            except ValueError:
                raise ValueError(f"budget {text!r}: {value!r} is not a number") from None
            if not v > 0:
                raise ValueError(f"budget {text!r}: must be > 0")
            params[BUDGET_KEYS[kind]] = f"{v:g}"
            ms = v if kind == "ms" else ms
        return cls(text, params, ms)


@dataclasses.dataclass(frozen=True)
class Upload:
    name: str             # file name in the form
    data: bytes
    label: str | None = None
    kind: str = "valid"   # or one of HOSTILE_KINDS


def render_clips(directory: Path, count: int, size: int, frames: int, seed: int) -> list[Upload]:
    """`count` synthetic-benchmark clips of different classes, real H.264 .mp4 files."""
    from video.synthetic import CLASSES, clip_rng, encode_mp4, render_clip

    directory.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(count):
        label = CLASSES[(i * 5) % len(CLASSES)]
        path = directory / f"clip{i:03d}_{label}.mp4"
        encode_mp4(render_clip(label, clip_rng(seed, i), size=size, frames=frames), str(path))
        # no label: top-1 is reported for --data only (the served model's classes may differ)
        clips.append(Upload(path.name, path.read_bytes()))
    return clips


def dataset_clips(manifest: Path, split: str, limit: int | None) -> list[Upload]:
    from training.data import load_samples

    samples, _ = load_samples(manifest, split)
    if limit:
        samples = samples[:limit]
    return [Upload(Path(s.path).name, Path(s.path).read_bytes(), s.label) for s in samples]


def hostile_uploads(directory: Path, clip: bytes) -> list[Upload]:
    """One upload per hostile kind, written to `directory` (kept for a look afterwards); made
    as video.corpus makes them (tests/test_hostile.py sends its whole corpus)."""
    from video.corpus import bit_flips, still_image

    directory.mkdir(parents=True, exist_ok=True)
    # a flipped bit every ~400 bytes, the container's tables at the end included
    made = {"empty": ("empty.mp4", b""),
            "text": ("notes.mp4", b"this is a text file, not a video\n" * 40),
            "truncated": ("truncated.mp4", clip[:len(clip) // 2]),
            "bitflip": ("bitflip.mp4", bit_flips(clip, every=400, seed=7)),
            "png": ("frame.png", still_image("png", "rgb24"))}
    out = []
    for kind in HOSTILE_KINDS:
        name, data = made[kind]
        (directory / name).write_bytes(data)
        out.append(Upload(name, data, None, kind))
    return out


@dataclasses.dataclass
class Result:
    kind: str
    budget: str
    status: int                 # 0: no HTTP answer (transport error or timeout)
    client_ms: float
    error: str | None = None    # the answer's error code, or the exception's name
    body: dict | None = None
    label: str | None = None
    budget_ms: float | None = None   # the latency budget it was sent with

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body is not None

    @property
    def met_at_client(self) -> bool:
        """A 200 answer within its latency budget, measured here."""
        return self.ok and self.budget_ms is not None and self.client_ms <= self.budget_ms

    def timing(self, stage: str) -> float | None:
        t = self.body.get("timing_ms", {}) if self.ok else {}
        return t.get(stage)


def send(client: httpx.Client, upload: Upload, budget: Budget) -> Result:
    t0 = time.perf_counter()
    try:
        r = client.post("/classify", params=budget.params,
                        files={"video": (upload.name, upload.data, "video/mp4")})
        try:
            body = r.json()
        except ValueError:
            body = None
        ms = (time.perf_counter() - t0) * 1e3
        error = None if r.status_code == 200 else (
            body.get("code") if isinstance(body, dict) else f"http {r.status_code}")
        return Result(upload.kind, budget.name, r.status_code, ms, error,
                      body if r.status_code == 200 else None, upload.label, budget.ms)
    except Exception as e:  # noqa: BLE001 - transport errors, timeouts: counted, never fatal
        return Result(upload.kind, budget.name, 0, (time.perf_counter() - t0) * 1e3,
                      f"{type(e).__name__}: {e}"[:200], None, upload.label, budget.ms)


class Tally:
    """Requests answered and not 200 so far, on one progress line (common.progress)."""

    def __init__(self, label: str, total: int | None, seconds: float | None):
        self.label, self.total, self.seconds = label, total, seconds
        self.done = self.errors = 0
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.progress = Progress(total, label + ":", interval=10)

    def add(self, result: Result) -> None:
        with self.lock:
            self.done += 1
            self.errors += result.status != 200
            self.progress.update(self.done, self.text())

    def text(self) -> str:
        el = time.monotonic() - self.start
        spent = f" in {el:.0f}/{self.seconds:g} s" if self.seconds else ""
        return f"requests{spent}, {self.done / max(el, 1e-9):.1f} req/s, {self.errors} non-200"

    def close(self) -> None:
        self.progress.close(f"{self.label}: {self.done} {self.text()}")


def run_clients(url: str, job, concurrency: int, requests: int | None, seconds: float | None,
                timeout: float, label: str) -> tuple[list[Result], float]:
    """`concurrency` threads, each with its own connection, send job(i) for i = 0, 1, ... until
    `requests` were sent or `seconds` passed; (results, wall seconds)."""
    counter, lock, results = iter(range(10 ** 12)), threading.Lock(), []
    progress = Tally(label, requests, seconds)
    start = time.perf_counter()
    deadline = start + seconds if seconds else None

    failures: list[BaseException] = []

    def worker():
        try:
            with httpx.Client(base_url=url, timeout=timeout) as client:
                while not failures:
                    with lock:
                        i = next(counter)
                    if (requests is not None and i >= requests) or \
                            (deadline is not None and time.perf_counter() >= deadline):
                        return
                    upload, budget = job(i)
                    result = send(client, upload, budget)
                    with lock:
                        results.append(result)
                    progress.add(result)
        except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
            failures.append(e)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    progress.close()
    if failures:
        raise failures[0]
    return results, wall


def mixed_job(clips: list[Upload], mix: list[Budget], seed: int):
    """Request i -> (clip, budget): the budget drawn from `mix` by a generator of its own, so
    that every policy and every concurrency level sees the same sequence."""
    def job(i):
        return clips[i % len(clips)], mix[random.Random(seed * 1_000_003 + i).randrange(len(mix))]
    return job
