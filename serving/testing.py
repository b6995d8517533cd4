"""Start the real `bentoml serve` process on a loopback port and wait until /readyz answers 200:
the one way the service tests (tests/test_service.py, tests/test_serve_load.py) and the load
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
    never gets ready)."""
    port = port or free_port(host)
    log_path = Path(log_path)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", service, "--host", host,
             "--port", str(port)],
            cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            url = f"http://{host}:{port}"
            wait_ready(url, proc, log_path, timeout_s)
            yield RunningServer(url, port, proc, log_path)
        finally:
            stop(proc)
