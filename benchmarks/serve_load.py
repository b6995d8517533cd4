"""Load benchmark of the real BentoML server (issue 5), with a soak mode (issue 7).

Starts `bentoml serve` from the repository root on a free loopback port (or uses a running one,
--url), waits for /readyz, uploads real H.264 clips to POST /classify from bounded concurrent
clients, cycling over the budgets, and prints one table per concurrency level:

    python benchmarks/serve_load.py --concurrency 1,4 --requests 40
    python benchmarks/serve_load.py --checkpoint runs/nano --duration 60 \\
        --budgets ms:40,ms:80,ms:200,gflops:0.1,none
    python benchmarks/serve_load.py --checkpoint runs/nano --data data/synthetic/manifest.csv
                                                    # the test split's clips; top-1 per budget
    python benchmarks/serve_load.py --url http://127.0.0.1:3000 --concurrency 8 --requests 200
    python benchmarks/serve_load.py --soak 600 --hostile 0.1      # issue 7, concurrency 8

Columns (200 answers only, except `errors` and `met`): req/s answered per second of the
level's wall time; p50/p95/p99 client-side latency (upload to parsed answer); `srv p50` the
server's timing_ms.total (arrival to answer); `ovh p50` total - (decode + preprocess + model),
i.e. upload, probe, queue and handling; `queue p50` the waits for a decoder and the model;
`feas` answers whose budget the server predicted feasible (budget.feasible) out of those with a
budget; `met` the
share of requests with budget_ms answered 200 within it at the client, every such request
counted (late ones, errors and the ones predicted infeasible too; the JSON also keeps
`hit_rate`, budget.met among the answers predicted feasible, which hides those);
`config` the configuration run most often (frames x pixels / patch); `errors` non-200 answers by
status (`exc` a transport error or timeout); `top1` with --data, the answer's first label
against the manifest's.

Budgets: `ms:80` (budget_ms), `gflops:0.1` (budget_gflops), `none`, or both joined with `+`
(`ms:80+gflops:0.1`). Clips: by default --clips synthetic-benchmark clips (video/synthetic.py,
--clip-size px, --clip-frames frames, 16 fps, H.264) rendered into a temporary directory.

Checkpoint: --checkpoint, else STRETCHYSNAKE_CHECKPOINT, else the service's default
(checkpoints/stretchysnake_nano); while that is not trained yet, fresh `--preset` weights with the
synthetic benchmark's 21 classes (latencies are real, labels noise; said on stderr and in the
JSON). Uploads go to a fresh STRETCHYSNAKE_TMPDIR, checked for leftovers at the end.

Soak (--soak SECONDS): mixed traffic at --concurrency (default 8) for that long, a --hostile share
of it hostile uploads (empty, a text file named .mp4, a truncated mp4, a bit-flipped mp4, a PNG
image) that must be answered 4xx, never 5xx; reports the 5xx count, statuses of hostile and
valid requests, the RSS of the server's process tree over time (psutil; by role: root, workers,
decoding processes) and its growth after --soak-warmup, worker restarts (a new worker pid),
temporary files left behind, p99 and budgets met per budget. Exit status 1 when a check fails.

Mixed budgets (--mixed, issue 29): every request draws its budget from --mix (default: 60, 100,
150, 250 and 500 ms, or none), the same sequence for every policy of --policies (default
deadline,fifo: one server each, started in turn, so that one run shows both side by side; a
policy may carry settings of its own, deadline:URGENT_SLOTS=0 for the scheduler without its
urgent lane). Per
concurrency level and policy: the share of latency budgets met at the client (a 200 answer
within budget_ms of sending it; every budgeted request counts, errors and late answers too),
the effective accuracy (correct and within budget, over all budgeted requests; needs --data),
throughput, and p50/p99 client latency per budget. Writes serve_mixed.{json,png}:

    python benchmarks/serve_load.py --mixed --data data/synthetic/manifest.csv \
        --concurrency 1,4,8 --duration 60

Frontier (--frontier, with --data at concurrency 1): after the budgeted requests, every profiled
configuration forced on the same clips, and per budget the best fixed configuration that fits
(met on >= 99% of the clips) against the budgeted server's top-1.

Writes benchmarks/results/serve_load.{json,png} or serve_soak.{json,png} (--out-dir elsewhere).
A progress line goes to stderr.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import os
import random
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import RESULTS, machine, print_table, save  # noqa: E402
from common.progress import Progress  # noqa: E402
from serving.testing import REPO, ServerFailed, serve  # noqa: E402

DEFAULT_BUDGETS = "ms:40,ms:80,ms:200,gflops:0.1,none"
DEFAULT_MIX = "ms:60,ms:100,ms:150,ms:250,ms:500,none"
HOSTILE_KINDS = ("empty", "text", "truncated", "bitflip", "png")
BUDGET_KEYS = {"ms": "budget_ms", "gflops": "budget_gflops"}


# ----------------------------------------------------------------------------- inputs
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


# ----------------------------------------------------------------------------- requests
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


# ----------------------------------------------------------------------------- statistics
def pct(values, q: float) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.percentile(values, q)) if values else None


def by_status(results: list[Result], include_ok: bool = False) -> dict:
    """{"429": 3, "exc": 1, ...}: answers by HTTP status (without 200 unless include_ok)."""
    counts = collections.Counter(str(r.status) if r.status else "exc" for r in results
                                 if include_ok or r.status != 200)
    return dict(sorted(counts.items()))


def summarize(results: list[Result], wall_s: float, budget: str | None = None) -> dict:
    ok = [r for r in results if r.ok]
    client = [r.client_ms for r in ok]
    overhead = [r.timing("total") - r.timing("decode") - r.timing("preprocess") - r.timing("model")
                for r in ok]
    # "all": feasibility and hits over the requests that had a budget
    with_budget = [r for r in ok if r.budget != "none"]
    # what a client sees: every request with a latency budget, errors included
    timed = [r for r in results if r.budget_ms is not None]
    budgeted = bool(with_budget)
    feasible = [r for r in with_budget if r.body["budget"]["feasible"]]
    configs = collections.Counter(
        "{frames}x{pixels}/{patch}".format(**r.body["config"]) for r in ok)
    labelled = [r for r in ok if r.label is not None]
    row = {
        "budget": budget or "all", "requests": len(results), "ok": len(ok),
        "throughput_rps": len(ok) / wall_s if wall_s > 0 else None,
        "client_ms": {"p50": pct(client, 50), "p95": pct(client, 95), "p99": pct(client, 99)},
        "server_total_ms": {"p50": pct([r.timing("total") for r in ok], 50),
                            "p99": pct([r.timing("total") for r in ok], 99)},
        "overhead_ms_p50": pct(overhead, 50),
        "queue_ms_p50": pct([r.timing("queue") for r in ok], 50),
        "stage_ms_p50": {s: pct([r.timing(s) for r in ok], 50)
                         for s in ("upload", "probe", "queue", "decode", "preprocess", "model")},
        "with_budget": len(with_budget),
        "feasible": len(feasible) if budgeted else None,
        "met": sum(r.body["budget"]["met"] for r in with_budget) if budgeted else None,
        "met_among_feasible": sum(r.body["budget"]["met"] for r in feasible) if budgeted else None,
        "hit_rate": (sum(r.body["budget"]["met"] for r in feasible) / len(feasible)
                     if budgeted and feasible else None),
        "latency_budgeted": len(timed),
        "met_at_client": (sum(r.met_at_client for r in timed) / len(timed)
                          if timed else None),
        "configs": dict(configs.most_common()),
        "errors_by_status": by_status(results),
        "top1": (sum(r.body["labels"][0]["label"] == r.label for r in labelled) / len(labelled)
                 if labelled else None),
    }
    return row


def _ms(v):
    return "-" if v is None else round(v, 1)


def table_row(s: dict, concurrency: int | None = None) -> dict:
    row = {"conc": concurrency, "budget": s["budget"], "n": s["requests"],
           "req/s": "-" if s["throughput_rps"] is None else round(s["throughput_rps"], 2),
           "p50": _ms(s["client_ms"]["p50"]), "p95": _ms(s["client_ms"]["p95"]),
           "p99": _ms(s["client_ms"]["p99"]), "srv p50": _ms(s["server_total_ms"]["p50"]),
           "ovh p50": _ms(s["overhead_ms_p50"]), "queue p50": _ms(s["queue_ms_p50"]),
           "feas": "-" if s["feasible"] is None else f"{s['feasible']}/{s['with_budget']}",
           "met": "-" if s["met_at_client"] is None else f"{s['met_at_client']:.0%}",
           "config": next(iter(s["configs"]), "-"),
           "errors": " ".join(f"{k}:{v}" for k, v in s["errors_by_status"].items()) or "-"}
    if s["top1"] is not None:
        row["top1"] = f"{s['top1']:.0%}"
    return row


# ----------------------------------------------------------------------------- the server
class ServerTree:
    """RSS of a process and its descendants, sampled in the background (psutil, else /proc)."""

    def __init__(self, pid: int | None, every_s: float):
        self.pid, self.every_s, self.samples, self.roles = pid, every_s, [], []
        self.workers: dict[int, float] = {}  # worker pid -> first seen (s): a restart adds one
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_mb(self) -> float | None:
        total = self.by_role()
        return None if total is None else sum(total.values())

    def by_role(self) -> dict[str, float] | None:
        """RSS in MiB of the tree's processes summed by role: the server's root process, its
        children (BentoML's workers), the decoding processes (video.isolation) and any other."""
        if self.pid is None:
            return None
        try:
            import psutil
        except ImportError:
            total = _proc_tree_rss(self.pid)
            return None if total is None else {"tree": total}
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None
        roles = collections.Counter()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                rss = p.memory_info().rss
                role = ("root" if p.pid == self.pid else
                        "decoders" if "video.isolation" in " ".join(p.cmdline()) else
                        "workers" if p.ppid() == self.pid else "other")
                roles[role] += rss / 2 ** 20
                if role == "workers":
                    self.workers.setdefault(p.pid, round(time.monotonic() - self.t0, 2))
        return dict(roles)

    def sample(self) -> None:
        roles = self.by_role()
        if roles is not None:
            t = round(time.monotonic() - self.t0, 2)
            self.samples.append([t, round(sum(roles.values()), 1)])
            self.roles.append([t, {k: round(v, 1) for k, v in sorted(roles.items())}])

    def _run(self):
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self):
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    def report(self, warmup_s: float = 0.0) -> dict:
        """start/max/end, and the growth after warm-up: the largest sample after `warmup_s`
        over the sample at `warmup_s`, as a fraction."""
        mbs = [mb for _, mb in self.samples]
        after = [mb for t, mb in self.samples if t >= warmup_s]
        growth = (max(after) / after[0] - 1) if len(after) >= 2 and after[0] else None
        return {"pid": self.pid, "every_s": self.every_s,
                "start": mbs[0] if mbs else None, "max": max(mbs) if mbs else None,
                "end": mbs[-1] if mbs else None, "warmup_s": warmup_s,
                "after_warmup": after[0] if after else None, "growth_after_warmup": growth,
                "worker_pids": {str(k): v for k, v in self.workers.items()},
                "samples": self.samples, "by_role": self.roles}


def _proc_tree_rss(pid: int) -> float | None:
    children: dict[int, list[int]] = collections.defaultdict(list)
    rss = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children[ppid].append(int(entry.name))
            rss[int(entry.name)] = int((entry / "statm").read_text().split()[1]) * page
    if pid not in rss:
        return None
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 2 ** 20


def pid_listening_on(port: int) -> int | None:
    """The process listening on a local port (psutil; None when it cannot be told)."""
    try:
        import psutil
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except Exception:  # noqa: BLE001 - permissions, platform
        pass
    return None


def fresh_checkpoint(directory: Path, preset: str) -> Path:
    from model import build_model, save_checkpoint
    from video.synthetic import CLASSES
    import torch

    torch.manual_seed(0)
    net = build_model(preset, num_classes=len(CLASSES)).eval()
    return save_checkpoint(net, directory / f"fresh_{preset}", labels=list(CLASSES))


def server_env(args, work: Path, tmpdir: Path) -> tuple[dict, str]:
    """The server's environment and a description of the checkpoint it serves."""
    from serving.settings import DEFAULT_CHECKPOINT

    env = dict(os.environ)
    env.update({"STRETCHYSNAKE_TMPDIR": str(tmpdir), "BENTOML_DO_NOT_TRACK": "True",
                "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
    if args.checkpoint:
        env["STRETCHYSNAKE_CHECKPOINT"] = str(Path(args.checkpoint).resolve())
        what = str(args.checkpoint)
    elif DEFAULT_CHECKPOINT.exists():
        env.pop("STRETCHYSNAKE_CHECKPOINT", None)
        what = f"{DEFAULT_CHECKPOINT.relative_to(REPO)} (the service's default)"
    else:
        path = fresh_checkpoint(work, args.preset)
        env["STRETCHYSNAKE_CHECKPOINT"] = str(path)
        what = (f"fresh {args.preset} weights (untrained: {DEFAULT_CHECKPOINT.relative_to(REPO)} "
                "does not exist yet; latencies are real, labels are noise)")
        print(f"no checkpoint given and none bundled: serving {what}", file=sys.stderr)
    if args.profile:
        env["STRETCHYSNAKE_PROFILE"] = str(Path(args.profile).resolve())
    if args.threads:
        env["STRETCHYSNAKE_THREADS"] = str(args.threads)
    if args.workers:
        env["BENTOML_CONFIG_OPTIONS"] = f"services.StretchySnake.workers={args.workers}"
    return env, what


def policy_env(policy: str) -> dict[str, str]:
    """"deadline" or "fifo", optionally with settings: "deadline:URGENT_SLOTS=0" ->
    the server's STRETCHYSNAKE_* variables (ValueError for anything else)."""
    name, *settings = policy.split(":")
    if name not in ("deadline", "fifo"):
        raise ValueError(f"a policy is deadline or fifo (with :SETTING=VALUE), not {policy!r}")
    env = {"STRETCHYSNAKE_SCHEDULER": name}
    for item in settings:
        key, sep, value = item.partition("=")
        if not (sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key) and value):
            raise ValueError(f"{item!r} in {policy!r}: settings are written NAME=VALUE, the "
                             f"name of a STRETCHYSNAKE_ variable without its prefix")
        env["STRETCHYSNAKE_" + key] = value
    return env


@contextlib.contextmanager
def server(args, work: Path, policy: str | None = None):
    """(url, pid or None, uploads directory or None, info): the --url server, or one started
    here (with STRETCHYSNAKE_SCHEDULER=policy when given) and stopped on leaving."""
    if args.url:
        url = args.url.rstrip("/")
        port = httpx.URL(url).port
        pid = args.server_pid or (pid_listening_on(port) if port else None)
        yield url, pid, args.server_tmpdir, {"started_here": False, "url": url}
        return
    if policy is not None:
        work = work / re.sub(r"[^A-Za-z0-9_.-]+", "_", policy)
    tmpdir = work / "uploads"
    tmpdir.mkdir(parents=True)
    env, what = server_env(args, work, tmpdir)
    if policy is not None:
        env.update(policy_env(policy))
    log = work / "server.log"
    print(f"starting bentoml serve ({what}); log: {log}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        with serve(env, log, timeout_s=args.start_timeout) as running:
            info = {"started_here": True, "checkpoint": what, "log": str(log),
                    "start_s": round(time.perf_counter() - t0, 1)}
            print(f"ready at {running.url} after {info['start_s']} s", file=sys.stderr)
            yield running.url, running.proc.pid, tmpdir, info
            text = log.read_text(errors="replace")
            info["tracebacks_in_log"] = text.count("Traceback")
            if info["tracebacks_in_log"]:
                print("tracebacks in the server log; the last one:\n"
                      + text[text.rindex("Traceback"):][:3000], file=sys.stderr)
    except ServerFailed as e:
        sys.exit(f"the server did not start: {e}")


def profile_configs(url: str) -> list[dict]:
    """The configurations of the server's active profile (frames, pixels, patch, gflops)."""
    view = httpx.get(url + "/profile", timeout=30).json()
    return [{k: c[k] for k in ("frames", "pixels", "patch", "gflops")}
            for c in view["table"]["configs"]]


def server_profile(url: str) -> dict:
    try:
        view = httpx.get(url + "/profile", timeout=30).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {"source": view.get("source"), "device": view.get("device"),
            "accuracy_known": view.get("accuracy_known"), "classes": view.get("classes"),
            "configs": len(view.get("table", {}).get("configs", [])),
            "model": {k: view.get("model", {}).get(k)
                      for k in ("embed_dim", "depth", "num_frames", "img_size", "patch_size",
                                "fingerprint")},
            "notes": view.get("notes")}


def leftovers(tmpdir: Path | None, wait_s: float = 5) -> list[str] | None:
    """Files still in the server's upload directory (after waiting up to wait_s for the last
    requests' clean-up); None when the directory is not known."""
    if tmpdir is None:
        return None
    tmpdir = Path(tmpdir)
    deadline = time.monotonic() + wait_s
    while True:
        left = sorted(p.name for p in tmpdir.iterdir()) if tmpdir.is_dir() else []
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ----------------------------------------------------------------------------- plots
def plot_load(levels: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(levels), figsize=(4.6 * len(levels), 4), squeeze=False)
    for ax, level in zip(axes[0], levels):
        rows = level["budgets"]
        x = np.arange(len(rows))
        for j, (q, colour) in enumerate((("p50", "C0"), ("p95", "C1"), ("p99", "C3"))):
            ax.bar(x + (j - 1) * 0.27, [r["client_ms"][q] or 0 for r in rows], 0.27, label=q,
                   color=colour)
        highest = max([r["client_ms"]["p99"] or 0 for r in rows] + [1e-3])
        shown = [highest]
        for i, r in enumerate(rows):
            ms = Budget.parse(r["budget"]).ms
            if ms is not None and ms <= 2 * highest:  # a far larger budget would squash the bars
                ax.hlines(ms, i - 0.45, i + 0.45, colors="k", linestyles="--", linewidth=1)
                shown.append(ms)
        ax.set_ylim(0, 1.12 * max(shown))
        ax.set_xticks(x, [r["budget"] for r in rows], rotation=30, fontsize=8)
        ax.set_title(f"concurrency {level['concurrency']}: "
                     f"{level['all']['throughput_rps']:.1f} req/s", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("client latency (ms); dashed: budget_ms")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_soak(rss: dict, path: Path) -> Path | None:
    if not rss.get("samples"):
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    t, mb = zip(*rss["samples"])
    ax.plot(t, mb, marker=".", label="all")
    roles = sorted({r for _, by in rss.get("by_role", []) for r in by})
    for role in roles if len(roles) > 1 else ():
        ax.plot([t for t, _ in rss["by_role"]], [by.get(role, 0) for _, by in rss["by_role"]],
                label=role, linewidth=1)
    if rss.get("warmup_s"):
        ax.axvline(rss["warmup_s"], color="k", linestyle=":", linewidth=1, label="warm-up end")
    ax.legend(fontsize=8)
    ax.set_xlabel("seconds into the soak")
    ax.set_ylabel("server process tree RSS (MiB)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(name: str, payload: dict, out_dir: Path) -> Path:
    if out_dir.resolve() == RESULTS.resolve():
        return save(name, payload)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path


# ----------------------------------------------------------------------------- the runs
def warm_up(url: str, clips: list[Upload], budgets: list[Budget], n: int, timeout: float):
    if n <= 0:
        return
    with httpx.Client(base_url=url, timeout=timeout) as client:
        for i in range(n):
            send(client, clips[i % len(clips)], budgets[i % len(budgets)])


def run_load(args, url: str, clips: list[Upload], budgets: list[Budget]) -> dict:
    def job(i):
        return clips[(i // len(budgets)) % len(clips)], budgets[i % len(budgets)]

    levels = []
    for conc in args.concurrency:
        results, wall = run_clients(url, job, conc, None if args.duration else args.requests,
                                    args.duration, args.timeout, f"concurrency {conc}")
        rows = [summarize([r for r in results if r.budget == b.name], wall, b.name)
                for b in budgets]
        overall = summarize(results, wall, "all")
        levels.append({"concurrency": conc, "wall_s": round(wall, 2), "budgets": rows,
                       "all": overall})
        print_table([table_row(r) for r in rows + [overall]],
                    [c for c in table_row(overall) if c != "conc"],
                    title=f"concurrency {conc}: {len(results)} requests in {wall:.1f} s, "
                          f"{overall['throughput_rps']:.2f} req/s answered")
    return {"levels": levels}


def mixed_job(clips: list[Upload], mix: list[Budget], seed: int):
    """Request i -> (clip, budget): the budget drawn from `mix` by a generator of its own, so
    that every policy and every concurrency level sees the same sequence."""
    def job(i):
        return clips[i % len(clips)], mix[random.Random(seed * 1_000_003 + i).randrange(len(mix))]
    return job


def summarize_mixed(results: list[Result], wall_s: float, mix: list[Budget]) -> dict:
    """What a client sees: every request with a latency budget counts, errors included."""
    timed = [r for r in results if r.budget_ms is not None]
    met = [r for r in timed if r.met_at_client]
    correct = [r for r in met if r.label is not None and r.body["labels"][0]["label"] == r.label]
    labelled = all(r.label is not None for r in timed)
    rows = []
    for b in mix:
        mine = [r for r in results if r.budget == b.name]
        ok = [r for r in mine if r.ok]
        rows.append({
            "budget": b.name, "requests": len(mine), "ok": len(ok),
            "met": sum(r.met_at_client for r in mine) if b.ms is not None else None,
            "client_ms": {"p50": pct([r.client_ms for r in ok], 50),
                          "p99": pct([r.client_ms for r in ok], 99)},
            "configs": dict(collections.Counter(
                "{frames}x{pixels}/{patch}".format(**r.body["config"]) for r in ok).most_common()),
            "reasons": dict(collections.Counter(r.body["budget"]["reason"] for r in ok
                                                if r.body["budget"]["reason"])),
            "errors_by_status": by_status(mine)})
    return {
        "requests": len(results), "ok": sum(r.ok for r in results), "wall_s": round(wall_s, 2),
        "throughput_rps": sum(r.ok for r in results) / wall_s if wall_s else None,
        "latency_budgeted": len(timed), "met": len(met),
        "met_share": len(met) / len(timed) if timed else None,
        "effective_accuracy": len(correct) / len(timed) if timed and labelled else None,
        "top1_answered": (sum(r.body["labels"][0]["label"] == r.label for r in results
                              if r.ok and r.label is not None)
                          / max(1, sum(r.ok and r.label is not None for r in results))
                          if labelled else None),
        "errors_by_status": by_status(results), "budgets": rows}


def run_mixed(args, work: Path, clips: list[Upload], mix: list[Budget]) -> dict:
    job = mixed_job(clips, mix, args.seed)
    runs = []
    for policy in args.policies:
        with server(args, work, policy) as (url, pid, tmpdir, info):
            info["profile"] = server_profile(url)
            warm_up(url, clips, [Budget.parse("none")],
                    3 * len(mix) if args.warmup is None else args.warmup, args.timeout)
            levels = []
            for conc in args.concurrency:
                results, wall = run_clients(url, job, conc,
                                            None if args.duration else args.requests,
                                            args.duration, args.timeout,
                                            f"{policy}, concurrency {conc}")
                levels.append({"concurrency": conc, **summarize_mixed(results, wall, mix)})
            info["tmp_files_left"] = leftovers(tmpdir)
        runs.append({"policy": policy, "server": info, "levels": levels})
    rows = []
    for conc in args.concurrency:
        for run in runs:
            level = next(lv for lv in run["levels"] if lv["concurrency"] == conc)
            row = {"conc": conc, "policy": run["policy"],
                   "req/s": round(level["throughput_rps"], 1),
                   "met": f"{level['met']}/{level['latency_budgeted']}"
                          f" {level['met_share']:.1%}" if level["met_share"] is not None else "-",
                   "eff. acc": "-" if level["effective_accuracy"] is None
                   else f"{level['effective_accuracy']:.1%}",
                   "errors": " ".join(f"{k}:{v}" for k, v in level["errors_by_status"].items())
                   or "-"}
            for b in level["budgets"]:
                row[b["budget"]] = f"{_ms(b['client_ms']['p50'])}/{_ms(b['client_ms']['p99'])}"
            rows.append(row)
    print_table(rows, list(rows[0]), title="mixed budgets, closed-loop clients: latency budgets "
                "met at the client, effective accuracy (correct and in time, over all budgeted "
                "requests), throughput; per budget p50/p99 client ms")
    return {"mix": [b.name for b in mix], "runs": runs}


def plot_mixed(out: dict, path: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("met_share", "latency budgets met at the client"),
              ("effective_accuracy", "effective accuracy"),
              ("throughput_rps", "answers per second"))
    for ax, (key, title) in zip(axes, panels):
        for run in out["runs"]:
            conc = [lv["concurrency"] for lv in run["levels"]]
            ax.plot(conc, [lv[key] if lv[key] is not None else np.nan for lv in run["levels"]],
                    marker="o", label=run["policy"])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("closed-loop clients")
        ax.set_xticks([lv["concurrency"] for lv in out["runs"][0]["levels"]])
        ax.grid(alpha=0.3)
        if key != "throughput_rps":
            ax.set_ylim(0, 1.02)
    axes[0].legend(fontsize=8)
    fig.suptitle("mixed budgets " + ", ".join(out["mix"]), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_frontier(args, url: str, clips: list[Upload], budgets: list[Budget], served: dict,
                 configs: list[dict]) -> dict:
    """Issue 5's accuracy target: every profiled configuration as a fixed one (the frames,
    pixels and patch overrides, no budget) on every clip at concurrency 1, then per budget the
    best fixed configuration that fits it (met on >= 99% of the clips, measured by the server's
    total time; GFLOPs <= a GFLOP budget) against what the budgeted server answered on the same
    clips (`served`: the concurrency-1 level of run_load)."""
    fixed = []
    for c in configs:
        key = f"{c['frames']}x{c['pixels']}/{c['patch']}"
        only = Budget(f"fixed {key}", {n: str(c[n]) for n in ("frames", "pixels", "patch")})
        results, _ = run_clients(url, lambda i, b=only: (clips[i % len(clips)], b), 1,
                                 len(clips), None, args.timeout, f"fixed {key}")
        row = summarize(results, 1.0, only.name)
        totals = [r.timing("total") for r in results if r.ok]
        fixed.append({"config": key, "gflops": c["gflops"], "top1": row["top1"],
                      "ok": row["ok"], "total_ms": {"p50": pct(totals, 50),
                                                    "p99": pct(totals, 99)},
                      "totals": totals})
    by_budget = {r["budget"]: r for r in served["budgets"]}
    rows = []
    for b in budgets:
        gflops = float(b.params["budget_gflops"]) if "budget_gflops" in b.params else None
        if b.ms is None and gflops is None:
            continue
        fits = [f for f in fixed if f["ok"] == len(clips) and f["top1"] is not None
                and (gflops is None or f["gflops"] <= gflops)
                and (b.ms is None or np.mean(np.asarray(f["totals"]) <= b.ms) >= 0.99)]
        best = max(fits, key=lambda f: (f["top1"], -f["gflops"]), default=None)
        got = by_budget[b.name]["top1"]
        rows.append({"budget": b.name, "served_top1": got, "served_configs":
                     by_budget[b.name]["configs"],
                     "best_fixed": best and best["config"], "best_fixed_top1": best and best["top1"],
                     "fixed_that_fit": [f["config"] for f in fits],
                     "served_at_least_fixed": None if best is None or got is None
                     else got >= best["top1"]})
    for f in fixed:
        del f["totals"]
    print_table([{"config": f["config"], "gflops": round(f["gflops"], 3),
                  "top1": "-" if f["top1"] is None else f"{f['top1']:.1%}",
                  "srv p50": _ms(f["total_ms"]["p50"]), "srv p99": _ms(f["total_ms"]["p99"])}
                 for f in fixed], ["config", "gflops", "top1", "srv p50", "srv p99"],
                title=f"fixed configurations, {len(clips)} clips each, concurrency 1")
    print_table([{"budget": r["budget"],
                  "served": "-" if r["served_top1"] is None else f"{r['served_top1']:.1%}",
                  "best fixed that fits": r["best_fixed"] or "none fits",
                  "its top1": "-" if r["best_fixed_top1"] is None
                  else f"{r['best_fixed_top1']:.1%}",
                  "served >= fixed": {None: "-", True: "yes", False: "NO"}[
                      r["served_at_least_fixed"]]} for r in rows],
                ["budget", "served", "best fixed that fits", "its top1", "served >= fixed"],
                title="accuracy at each budget: budgeted server vs the best fixed configuration "
                      "that fits (>= 99% of clips within the budget)")
    return {"clips": len(clips), "fixed": fixed, "budgets": rows}


def run_soak(args, url: str, clips: list[Upload], budgets: list[Budget], hostile: list[Upload],
             pid: int | None) -> dict:
    rng = random.Random(args.seed)
    plan_lock = threading.Lock()
    plan: list[tuple[Upload, Budget]] = []   # request i -> what it sends, drawn in order of i
    counts = collections.Counter()

    def job(i):
        with plan_lock:  # the same mix whatever the thread interleaving
            while len(plan) <= i:
                budget = budgets[len(plan) % len(budgets)]
                if rng.random() < args.hostile:
                    upload = hostile[counts["hostile"] % len(hostile)]
                    counts["hostile"] += 1
                else:
                    upload = clips[counts["valid"] % len(clips)]
                    counts["valid"] += 1
                plan.append((upload, budget))
            return plan[i]

    every = max(0.5, min(5.0, args.soak / 60))
    with ServerTree(pid, every) as tree:
        results, wall = run_clients(url, job, args.concurrency[0], None, args.soak, args.timeout,
                                    f"soak, concurrency {args.concurrency[0]}")
    valid = [r for r in results if r.kind == "valid"]
    bad = [r for r in results if r.kind != "valid"]
    by_kind = {k: by_status([r for r in bad if r.kind == k], include_ok=True)
               for k in HOSTILE_KINDS}
    not_4xx = collections.Counter(f"{r.kind}:{r.status or 'exc'}" for r in bad
                                  if not 400 <= r.status < 500)
    rows = [summarize([r for r in valid if r.budget == b.name], wall, b.name) for b in budgets]
    five = sum(r.status >= 500 for r in results)
    return {
        "seconds": args.soak, "wall_s": round(wall, 2), "concurrency": args.concurrency[0],
        "hostile_share": args.hostile, "requests": len(results),
        "throughput_rps": len(results) / wall if wall else None,
        "status_5xx": five,
        "valid": {"requests": len(valid), "ok": sum(r.ok for r in valid),
                  "errors_by_status": by_status(valid)},
        "hostile": {"requests": len(bad), "by_kind": by_kind,
                    "codes_by_kind": {k: dict(collections.Counter(
                        r.error for r in bad if r.kind == k and r.error)) for k in HOSTILE_KINDS},
                    "not_4xx": dict(sorted(not_4xx.items()))},
        "budgets": rows, "rss_mb": tree.report(args.soak_warmup),
    }


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_argument_group("the server")
    g.add_argument("--url", help="use this running server instead of starting one")
    g.add_argument("--checkpoint", default=os.environ.get("STRETCHYSNAKE_CHECKPOINT") or None,
                   help="served checkpoint (default: $STRETCHYSNAKE_CHECKPOINT, else the "
                        "service's default, else fresh --preset weights)")
    g.add_argument("--preset", default="nano",
                   help="preset of the fresh weights served when no checkpoint exists (nano)")
    g.add_argument("--profile", help="STRETCHYSNAKE_PROFILE for the server (default: "
                                     "profiles/<device>.json, else a quick self-profile)")
    g.add_argument("--threads", type=int, help="STRETCHYSNAKE_THREADS (torch threads per worker)")
    g.add_argument("--workers", type=int, help="BentoML workers (each loads the model)")
    g.add_argument("--start-timeout", type=float, default=600,
                   help="seconds to wait for /readyz (600)")
    g.add_argument("--server-pid", type=int,
                   help="with --url: the server's pid, for RSS (default: the port's listener)")
    g.add_argument("--server-tmpdir", type=Path,
                   help="with --url: its STRETCHYSNAKE_TMPDIR, checked for leftovers")
    g = ap.add_argument_group("the load")
    g.add_argument("--budgets", default=DEFAULT_BUDGETS,
                   help=f"comma-separated, cycled over (default {DEFAULT_BUDGETS})")
    g.add_argument("--concurrency", help="levels run in turn, e.g. 1,4 (default 1,4; soak 8)")
    g.add_argument("--requests", type=int, default=50, help="requests per level (50)")
    g.add_argument("--duration", type=float, help="seconds per level instead of --requests")
    g.add_argument("--warmup", type=int, help="unrecorded requests first (default: one per "
                                              "budget)")
    g.add_argument("--timeout", type=float, default=120, help="per request, seconds (120)")
    g.add_argument("--frontier", action="store_true",
                   help="with --data and a first --concurrency of 1: also every profiled "
                        "configuration as a fixed one on the same clips, and per budget the "
                        "best fixed configuration that fits against the budgeted answers")
    g = ap.add_argument_group("mixed budgets (issue 29)")
    g.add_argument("--mixed", action="store_true",
                   help="each request draws its budget from --mix; one server per --policies")
    g.add_argument("--mix", default=DEFAULT_MIX, help=f"budgets drawn from (default {DEFAULT_MIX})")
    g.add_argument("--policies", default="deadline,fifo",
                   help="STRETCHYSNAKE_SCHEDULER of each server, side by side, each with "
                        "settings of its own if given: deadline:URGENT_SLOTS=0 (deadline,fifo)")
    g = ap.add_argument_group("the clips")
    g.add_argument("--data", type=Path, help="a manifest.csv: its --split clips, and top-1")
    g.add_argument("--split", default="test")
    g.add_argument("--clips", type=int, help="number of clips (generated: 4; --data: all)")
    g.add_argument("--clip-size", type=int, default=128, help="generated clips' side (128)")
    g.add_argument("--clip-frames", type=int, default=64, help="generated clips' frames (64)")
    g.add_argument("--seed", type=int, default=0)
    g = ap.add_argument_group("soak (issue 7)")
    g.add_argument("--soak", type=float, metavar="SECONDS", help="soak for this long instead")
    g.add_argument("--hostile", type=float, default=0.1, help="hostile share in soak (0.1)")
    g.add_argument("--soak-warmup", type=float, default=60, metavar="SECONDS",
                   help="RSS growth is counted from this point of the soak (60)")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="where JSON/PNG go")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    try:
        args.budget_list = [Budget.parse(b) for b in args.budgets.split(",") if b.strip()]
        args.mix_list = [Budget.parse(b) for b in args.mix.split(",") if b.strip()]
        args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
        for policy in args.policies:
            policy_env(policy)
        levels = args.concurrency or ("8" if args.soak else "1,4,8" if args.mixed else "1,4")
        args.concurrency = [int(c) for c in levels.split(",") if c.strip()]
    except ValueError as e:
        ap.error(str(e))
    if not args.budget_list:
        ap.error("--budgets is empty")
    if not args.concurrency or min(args.concurrency) < 1:
        ap.error("--concurrency takes positive integers, e.g. 1,4")
    if args.soak is not None and (args.soak <= 0 or len(args.concurrency) != 1):
        ap.error("--soak takes seconds > 0 and one --concurrency level")
    if not 0 <= args.hostile <= 1:
        ap.error("--hostile is a share between 0 and 1")
    if args.requests < 1 or (args.duration is not None and args.duration <= 0):
        ap.error("--requests and --duration must be positive")
    if args.mixed and (args.soak is not None or args.frontier or args.url):
        ap.error("--mixed starts its own servers: no --soak, --frontier or --url")
    if args.mixed and (not args.mix_list or not args.policies):
        ap.error("--mixed needs a --mix and --policies")
    if args.frontier and (not args.data or args.soak is not None or args.concurrency[0] != 1
                          or args.duration is not None):
        ap.error("--frontier needs --data, a first --concurrency of 1 and --requests (every "
                 "budget must see the same clips), and no --soak")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    budgets = args.budget_list
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        if args.data:
            clips = dataset_clips(args.data, args.split, args.clips)
            source = {"data": str(args.data), "split": args.split, "clips": len(clips)}
        else:
            n = args.clips or 4
            print(f"rendering {n} synthetic clips ({args.clip_frames} frames at "
                  f"{args.clip_size} px, H.264)", file=sys.stderr)
            clips = render_clips(work / "clips", n, args.clip_size, args.clip_frames, args.seed)
            source = {"generated": len(clips), "size": args.clip_size, "frames": args.clip_frames,
                      "fps": 16, "codec": "h264",
                      "bytes": [len(c.data) for c in clips]}
        if args.mixed:
            out = run_mixed(args, work, clips, args.mix_list)
            write("serve_mixed.json", {"mode": "mixed", "clips": source, **out}, args.out_dir)
            png = None if args.no_plot else plot_mixed(out, args.out_dir / "serve_mixed.png")
            if png:
                print(f"wrote {png}")
            return 0
        hostile = hostile_uploads(work / "hostile", clips[0].data) if args.soak else []
        if args.frontier:  # every budget sees every clip once
            args.requests = len(clips) * len(budgets)
        with server(args, work) as (url, pid, tmpdir, info):
            info["profile"] = server_profile(url)
            warm_up(url, clips, budgets, len(budgets) if args.warmup is None else args.warmup,
                    args.timeout)
            if args.soak:
                out = run_soak(args, url, clips, budgets, hostile, pid)
            else:
                out = run_load(args, url, clips, budgets)
                if args.frontier:
                    out["frontier"] = run_frontier(args, url, clips, budgets,
                                                   out["levels"][0], profile_configs(url))
            left = leftovers(tmpdir)
        payload = {"mode": "soak" if args.soak else "load", "server": info, "clips": source,
                   "budgets": [b.name for b in budgets], **out, "tmp_files_left": left}
    name = "serve_soak" if args.soak else "serve_load"
    status = 0
    if args.soak:
        checks = {"no_5xx": out["status_5xx"] == 0,
                  "hostile_all_4xx": not out["hostile"]["not_4xx"],
                  "no_temp_files_left": not left,
                  # None: the soak was too short to measure it
                  "rss_growth_under_10pct": None if out["rss_mb"]["growth_after_warmup"] is None
                  else out["rss_mb"]["growth_after_warmup"] < 0.10,
                  "no_tracebacks_in_log": not info.get("tracebacks_in_log"),
                  # a worker that crashed is restarted by BentoML under a new pid
                  "no_worker_restarts": None if not out["rss_mb"]["worker_pids"] else
                  max(out["rss_mb"]["worker_pids"].values()) <= out["rss_mb"]["samples"][0][0]}
        payload["checks"] = checks
        print_table([{"budget": r["budget"], "n": r["requests"], "ok": r["ok"],
                      "p50": _ms(r["client_ms"]["p50"]), "p99": _ms(r["client_ms"]["p99"]),
                      "srv p99": _ms(r["server_total_ms"]["p99"]),
                      "met": "-" if r["met"] is None else f"{r['met']}/{r['ok']}",
                      "at client": "-" if r["met_at_client"] is None
                      else f"{r['met_at_client']:.0%}",
                      "errors": " ".join(f"{k}:{v}" for k, v in r["errors_by_status"].items())
                      or "-"} for r in out["budgets"]],
                    ["budget", "n", "ok", "p50", "p99", "srv p99", "met", "at client", "errors"],
                    title=f"soak: {out['requests']} requests in {out['wall_s']} s at concurrency "
                          f"{out['concurrency']}, {out['hostile']['requests']} hostile")
        rss = out["rss_mb"]
        print(f"\n5xx: {out['status_5xx']}   valid non-200: {out['valid']['errors_by_status']}")
        print("hostile by kind: " + "; ".join(f"{k} {v}" for k, v in
                                              out["hostile"]["by_kind"].items()))
        growth = rss["growth_after_warmup"]
        print(f"server RSS MiB: start {rss['start']}, at {rss['warmup_s']:g} s "
              f"{rss['after_warmup']}, max {rss['max']}, end {rss['end']}; growth after warm-up "
              f"{'-' if growth is None else f'{growth:+.1%}'}   "
              f"temp files left: {left if left is not None else 'unknown (--server-tmpdir)'}")
        print("checks: " + ", ".join(
            f"{k} {'not measured' if v is None else 'ok' if v else 'FAILED'}"
            for k, v in checks.items()))
        status = 0 if all(v is not False for v in checks.values()) else 1
    elif left:
        print(f"temporary files left in the server's upload directory: {left}")
    write(f"{name}.json", payload, args.out_dir)
    if not args.no_plot:
        png = (plot_soak(out["rss_mb"], args.out_dir / f"{name}.png") if args.soak
               else plot_load(out["levels"], args.out_dir / f"{name}.png"))
        if png:
            png = png.resolve()
            print(f"wrote {png.relative_to(REPO) if png.is_relative_to(REPO) else png}")
    return status


if __name__ == "__main__":
    sys.exit(main())
