"""Start the real `bentoml serve` process on a loopback port and wait until /readyz answers 200:
the one way the service tests and the load
benchmark (benchmarks/serve_load.py) run the server.

    with serve(env, log_path) as server:          # env: the server's whole environment
        httpx.post(server.url + "/classify", ...)
    # on leaving: SIGTERM to the server's process group (SIGKILL after 15 s)

The server runs in a session of its own (`start_new_session`), so that stopping it stops its
worker processes too and nothing else. Standard library and httpx (a BentoML dependency)."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
SERVICE = "serving.service:StretchySnake"


PORT_TRIES = 3  # free ports tried by serve() when another process takes the one chosen


class ServerFailed(RuntimeError):
    """The server exited, or was not ready in time; the message ends with its log's tail."""


@dataclasses.dataclass(frozen=True)
class RunningServer:
    url: str
    port: int
    proc: subprocess.Popen
    log: Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float,
               poll_s: float = 0.2) -> None:
    """Until GET /readyz answers 200; ServerFailed if the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise ServerFailed(f"bentoml serve exited with {proc.returncode}:\n"
                               + log_tail(log_path))
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise ServerFailed(f"server not ready after {timeout_s:g} s:\n" + log_tail(log_path))
        time.sleep(poll_s)


def stop(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    """SIGTERM to the server's process group (the session `serve` started), SIGKILL if it
    outlives timeout_s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


@contextlib.contextmanager
def serve(env: Mapping[str, str], log_path: Path, *, host: str = "127.0.0.1",
          port: int | None = None, timeout_s: float = 90, cwd: Path = REPO,
          service: str = SERVICE) -> Iterator[RunningServer]:
    """`python -m bentoml serve SERVICE` from the repository root with exactly `env`, its
    output in log_path; yields once ready, stops it on leaving (ServerFailed on entering if it
    never gets ready). Without `port`, a free one; the port is free when chosen but not held,
    so a server that finds it taken by then starts again on another (up to PORT_TRIES)."""
    log_path = Path(log_path)
    for attempt in range(1, PORT_TRIES + 1):
        chosen = port or free_port(host)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "bentoml", "serve", service, "--host", host,
                 "--port", str(chosen)],
                cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        try:
            url = f"http://{host}:{chosen}"
            try:
                wait_ready(url, proc, log_path, timeout_s)
            except ServerFailed:
                taken = "address already in use" in log_tail(log_path).lower()
                if port is None and taken and attempt < PORT_TRIES:
                    continue
                raise
            yield RunningServer(url, chosen, proc, log_path)
            return
        finally:
            stop(proc)


def metric(url: str, name: str, **labels) -> float:
    """A metric of the server's /metrics, summed over its lines whose labels include `labels`
    (0 when absent): metric(url, "stretchysnake_queue_depth", stage="pending")."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        if head.split("{")[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def decoding_processes(server_pid: int) -> list[int]:
    """The decoding processes (video.isolation) under a server's process tree (Linux /proc;
    BentoML's workers start sessions of their own, so the tree, not the session, says whose)."""
    children: dict[int, list[int]] = {}
    decoding = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
        if b"_child_main" in cmdline:
            decoding.add(int(entry.name))
    found, todo = [], [server_pid]
    while todo:
        pid = todo.pop()
        found += [c for c in children.get(pid, []) if c in decoding]
        todo += children.get(pid, [])
    return sorted(found)


def server_env(root: Path, checkpoint: Path, profile: Path, **settings) -> dict:
    """The server's environment for a test or benchmark under `root`: this process's environment
    without any STRETCHYSNAKE_ setting, then the checkpoint, profile, one thread, and uploads,
    caches, temporary files and BentoML's home all under `root` (root/tmp is created). settings:
    more STRETCHYSNAKE_ settings by name without the prefix, e.g. MAX_INFLIGHT=2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRETCHYSNAKE_")}
    env.update({
        "STRETCHYSNAKE_CHECKPOINT": str(checkpoint),
        "STRETCHYSNAKE_PROFILE": str(profile),
        "STRETCHYSNAKE_TMPDIR": str(root / "uploads"),
        "STRETCHYSNAKE_THREADS": "1",
        "STRETCHYSNAKE_CACHE": str(root / "cache"),
        **{f"STRETCHYSNAKE_{name}": str(value) for name, value in settings.items()},
        "OMP_NUM_THREADS": "1",
        "TMPDIR": str(root / "tmp"),
        "BENTOML_HOME": str(root / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "True",
        "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    return env


# What the service tests serve: four classes and four profiled configurations, (frames, pixels,
# patch) -> accuracy, the most accurate also the most expensive.
TINY_LABELS = ["left", "right", "up", "down"]
TINY_CONFIGS = {(4, 56, 8): 0.5, (8, 56, 8): 0.6, (8, 112, 16): 0.7, (16, 112, 16): 0.8}


def tiny_checkpoint(root: Path, labels: list[str], accuracy: Mapping[tuple[int, int, int], float]):
    """(net, checkpoint dir, profile path) under `root`: a 2-layer, 32-wide nano (seed 0) and a
    quickly measured profile of the configurations in `accuracy` with those accuracies and a
    made-up decode model (the server corrects it online). What the service tests serve."""
    import torch

    from model import build_model, save_checkpoint

    from . import profile as prof
    from .decode_cost import TERMS, DecodeModel

    torch.manual_seed(0)
    net = build_model("nano", num_classes=len(labels), depth=2, embed_dim=32).eval()
    checkpoint = save_checkpoint(net, root / "ckpt", labels=labels)
    decode = DecodeModel(0.5, {t: 0.05 for t in TERMS}, {"h264": 0.5}).to_dict()
    table = prof.build_table(net, list(accuracy), warmup=1, min_runs=2, min_seconds=0, max_runs=2,
                             decode_model=decode, show_progress=False)
    for c in table["configs"]:
        c["accuracy"] = accuracy[(c["frames"], c["pixels"], c["patch"])]
    return net, checkpoint, prof.write_table(table, root / "profile.json")
