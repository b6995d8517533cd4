"""The server side of benchmarks/serve_load.py: a `bentoml serve` started per run (or one already
running), its environment and policy settings, its process tree's RSS sampled in the
background, the leak verdict, and the upload directory checked for leftovers."""
from __future__ import annotations

import collections
import contextlib
import os
import re
import sys
import threading
import time
from pathlib import Path

import httpx

from serving.testing import REPO, ServerFailed, serve


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


MIN_LEAK_SPAN_S = 60.0  # RSS growth over less than this after warm-up is not judged


def leak_verdict(rss: dict, min_span_s: float = MIN_LEAK_SPAN_S) -> bool | None:
    """Did the server's RSS grow less than 10% after warm-up (`RssSampler.report`)? None when
    the samples after warm-up span less than `min_span_s`: over seconds, the growth measured is
    the allocator and caches warming up, not a leak."""
    after = [t for t, _ in rss["samples"] if t >= rss["warmup_s"]]
    if rss["growth_after_warmup"] is None or not after or after[-1] - after[0] < min_span_s:
        return None
    return rss["growth_after_warmup"] < 0.10


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


def benchmark_env(args, work: Path, tmpdir: Path) -> tuple[dict, str]:
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
    env, what = benchmark_env(args, work, tmpdir)
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
