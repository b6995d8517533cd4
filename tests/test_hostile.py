"""Hostile inputs (issue 7): the corpus of `video.corpus` (valid files of every container and
codec this FFmpeg writes, and hostile ones) against the real `bentoml serve`, and the hard time
and memory bounds of isolated decoding (`video.isolation`) on their own.

One server for the module, with the tiny model of tests/test_service.py, decoding isolated in
child processes (the default), `STRETCHYSNAKE_MAX_DECODE_S=1` and the default memory allowance.

Timing: every file must be answered within TARGET_S = 2 s. It is measured on the client (the
whole HTTP request over loopback, upload included: the server's error answers carry no timing)
and asserted against TARGET_S + MARGIN_S, so that a machine loaded by other jobs does not fail
the suite; the printed table marks every file over the 2 s target itself."""
from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from serving.decode_cost import write_test_video
from serving.errors import from_video_error
from serving.settings import Settings, SettingsError
from serving.stages import Stages
from serving.testing import ServerFailed, decoding_processes, serve, server_env, tiny_checkpoint
from serving.testing import TINY_CONFIGS as CONFIGS, TINY_LABELS as LABELS
from video import (CorruptVideo, DecodeMemoryExceeded, DecodeStats, DecodeTimeout,
                   FrameTooLarge, Limits)
from video import corpus as hostile
from video.isolation import DecodePool, InlineDecoder

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py
MAX_UPLOAD = 4_000_000
MAX_DECODE_S = 1.0
TARGET_S, MARGIN_S = 2.0, 1.0
LINUX = sys.platform.startswith("linux")


@pytest.fixture(scope="module")
def corpus():
    return hostile.build()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("hostile")
    _, ckpt, profile = tiny_checkpoint(root, LABELS, CONFIGS)
    return {"root": root, "ckpt": ckpt, "profile": profile}


@pytest.fixture(scope="module")
def server(assets):
    root = assets["root"]
    env = server_env(root, assets["ckpt"], assets["profile"], MAX_UPLOAD_BYTES=MAX_UPLOAD,
                     MAX_DECODE_S=MAX_DECODE_S, DECODE_ISOLATION="process", MAX_INFLIGHT=4)
    try:
        with serve(env, root / "server.log", timeout_s=90) as running:
            with httpx.Client(base_url=running.url, timeout=60) as client:
                yield {"client": client, "proc": running.proc, "log": running.log,
                       "uploads": root / "uploads", "tmp": root / "tmp"}
    except ServerFailed as e:
        pytest.fail(str(e))


def _post(server, name: str, data: bytes, query: str = "") -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = server["client"].post("/classify" + query, files={"video": (name, data, "video/mp4")})
    return r, time.perf_counter() - t0


def _table(rows: list[dict]) -> str:
    lines = [f"{'file':34s} {'status':>6s} {'code':18s} {'seconds':>7s}  message / result"]
    for r in rows:
        late = "  OVER THE 2 s TARGET" if r["seconds"] > TARGET_S else ""
        lines.append(f"{r['name']:34s} {r['status']:>6d} {r['code'] or '':18s} "
                     f"{r['seconds']:7.3f}  {r['message'][:90]}{late}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the server
def test_every_file_gets_its_answer_within_the_time_target(server, corpus, capsys):
    rows, wrong = [], []
    clip = corpus["h264.mp4"].data
    extra = [hostile.Case("over_the_upload_limit.mp4", np.random.default_rng(1).bytes(
                 MAX_UPLOAD + 1), 413, "too_large", "limit of this server"),
             hostile.Case("valid_but_top_k_0.mp4", clip, 422, "invalid_parameters", "top_k")]
    for case in corpus.cases + extra:
        query = "?top_k=0" if case.name == "valid_but_top_k_0.mp4" else ""
        r, seconds = _post(server, case.name, case.data, query)
        body = r.json()
        if r.status_code == 200:
            v = body["video"]
            message = f"{v['codec']} {v['width']}x{v['height']} {v['duration_s']} s -> " \
                      f"{body['config']['frames']}x{body['config']['pixels']}"
        else:
            message = body["error"]
        row = {"name": case.name, "status": r.status_code, "code": body.get("code"),
               "seconds": seconds, "message": message}
        rows.append(row)
        ok = case.allows(r.status_code, body.get("code"))
        if r.status_code != 200 and case.match is not None and case.match not in message:
            ok = False
        if r.status_code == 200 and not (body["labels"] and body["config"]["frames"]):
            ok = False
        if not ok:
            wrong.append(f"{case.name}: expected {case.status} {case.code} ~{case.match!r}, "
                         f"got {r.status_code} {body.get('code')}: {message}")
    # what the metadata says reaches the answer: displayed size after rotation, the bitstream's
    # size rather than a lying header
    answers = {r["name"]: r for r in rows}
    assert "48x64" in answers["rotated_90.mp4"]["message"]
    assert "64x48" in answers["header_claims_8k.mp4"]["message"]
    with capsys.disabled():
        print(f"\n{len(rows)} files (corpus built in {corpus.seconds:.1f} s; skipped: "
              f"{corpus.skipped or 'none'})\n" + _table(rows))
        slow = [r["name"] for r in rows if r["seconds"] > TARGET_S]
        print(f"2 s target: {'met by every file' if not slow else 'MISSED by ' + str(slow)}; "
              f"slowest {max(r['seconds'] for r in rows):.2f} s")
    assert not wrong, "\n".join(wrong)
    too_slow = [(r["name"], round(r["seconds"], 2)) for r in rows
                if r["seconds"] > TARGET_S + MARGIN_S]
    assert not too_slow, too_slow


def test_bombs_are_stopped_and_the_server_keeps_serving(server, corpus, capsys):
    bomb = next(c for c in corpus.cases if c.bounded)
    clip = corpus["h264.mp4"].data
    before = server["client"].get("/profile").json()["decoding"]["restarts"]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        bombs = [pool.submit(_post, server, bomb.name, bomb.data) for _ in range(2)]
        time.sleep(0.1)
        valid = pool.submit(_post, server, "clip.mp4", clip)
        answers = [f.result() for f in bombs]
        r, valid_s = valid.result()
    assert r.status_code == 200, r.text
    for r, seconds in answers:
        assert r.status_code == 413 and r.json()["code"] in bomb.code, r.text
        # the bound: one max_decode_s for the request's decoding, plus the kill's grace
        assert seconds < MAX_DECODE_S + 0.25 + MARGIN_S, seconds
    assert server["client"].get("/readyz").status_code == 200
    deadline = time.monotonic() + 10  # killed children are reaped and counted in the background
    while True:
        decoding = server["client"].get("/profile").json()["decoding"]
        if decoding["restarts"] >= before + 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert decoding["isolation"] == "process" and decoding["restarts"] >= before + 2
    with capsys.disabled():
        print(f"\nbomb ({len(bomb.data):,} bytes) x2 in parallel with a valid clip: "
              f"{', '.join(f'{s:.2f} s' for _, s in answers)} to 413; the valid clip "
              f"{valid_s:.2f} s to 200")


def test_server_is_healthy_and_left_nothing_behind(server, corpus):
    # runs last among the server tests: after every file of the corpus and the bombs
    assert server["client"].get("/readyz").status_code == 200
    assert server["client"].get("/livez").status_code == 200
    r, _ = _post(server, "clip.mp4", corpus["h264.mp4"].data)
    assert r.status_code == 200
    deadline = time.monotonic() + 5
    while server["uploads"].exists() and list(server["uploads"].iterdir()):
        assert time.monotonic() < deadline, list(server["uploads"].iterdir())
        time.sleep(0.05)
    assert [p for p in server["tmp"].rglob("*") if p.name.startswith(("upload-", "warmup-"))] == []
    assert server["proc"].poll() is None
    if LINUX:  # killed children were replaced, not piled up: the pool's size at most
        size = server["client"].get("/profile").json()["decoding"]["processes"]
        deadline = time.monotonic() + 10
        while len(decoding_processes(server["proc"].pid)) > size:
            assert time.monotonic() < deadline, decoding_processes(server["proc"].pid)
            time.sleep(0.1)
    assert "Traceback" not in server["log"].read_text(errors="replace")


# ----------------------------------------------------------------------------- the bounds
_INLINE = """
import json, resource, sys, time
from video import DecodeTimeout, Limits, decode_frames, probe
path, limit = sys.argv[1], float(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
info = probe(path, Limits(max_decode_s=limit))      # no deadline at all while opening
probe_s = time.perf_counter() - t0
t0 = time.perf_counter()
try:
    decode_frames(path, 8, short_side=128, limits=Limits(max_decode_s=limit))
    outcome = "decoded"
except DecodeTimeout:
    outcome = "DecodeTimeout"
decode_s = time.perf_counter() - t0
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"probe_s": probe_s, "decode_s": decode_s, "outcome": outcome,
                  "grown_bytes": grown, "width": info.width}))
"""


def test_the_in_process_bounds_do_not_hold_against_a_bomb(tmp_path, capsys):
    """Why decoding is isolated: with max_decode_s = 0.05 s, opening a 16-stream bomb in the
    process itself runs to the end (probe has no deadline, and decode checks its deadline only
    after FFmpeg has opened the file) and the process grows by hundreds of times the file's size."""
    path = tmp_path / "bomb16.flv"
    path.write_bytes(hostile.bomb(16))
    out = subprocess.run([sys.executable, "-c", _INLINE, str(path), "0.05"], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    m = json.loads(out.stdout)
    with capsys.disabled():
        print(f"\ninline, max_decode_s=0.05, {path.stat().st_size:,}-byte bomb: probe ran "
              f"{m['probe_s']:.2f} s and answered (width {m['width']}); decode_frames "
              f"{m['outcome']} after {m['decode_s']:.2f} s; peak RSS "
              f"+{m['grown_bytes'] / 2**20:,.0f} MiB")
    assert m["width"] == 64 and m["probe_s"] > 0.05       # the limit was not applied
    assert m["outcome"] == "DecodeTimeout" and m["decode_s"] > 0.05
    # 0.17-1.2 GB measured (how much of it is resident varies with the machine and the
    # kernel's page handling): over a thousand times the file's 122 KB. The bound checked is
    # the one no honest limit would allow, 500 times the file.
    assert m["grown_bytes"] > 500 * path.stat().st_size


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> Path:
    """2 s of 320x240 H.264 (8 frames at 128 px is the overhead measurement's request)."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    path.write_bytes(hostile.encode("libx264", "mp4", size=(320, 240), frames=50, fps=25,
                                    options={"g": "25"}))
    return path


def test_the_time_bound_kills_a_decode_that_overruns(tmp_path, clip_path, capsys):
    path = tmp_path / "bomb.flv"
    path.write_bytes(hostile.bomb())
    limits = Limits(max_decode_s=0.5)
    # memory generous, so that the clock, not the allowance, stops it
    with DecodePool(processes=1, memory_bytes=8 << 30) as pool:
        pool.probe(clip_path, limits)  # the child is up
        t0 = time.perf_counter()
        with pytest.raises(DecodeTimeout, match="stopped after") as err:
            pool.probe(path, limits)
        stopped = time.perf_counter() - t0
        assert err.value.limit == 0.5 and stopped < 0.5 + pool.grace_s + MARGIN_S
        # the killed child is replaced and the pool goes on
        frames = pool.decode_frames(clip_path, 8, short_side=128, limits=limits)
        assert frames.shape == (8, 128, 171, 3)
        assert pool.restarts == 1
    with capsys.disabled():
        print(f"\ntime bound 0.5 s (+{pool.grace_s} s grace): the {path.stat().st_size:,}-byte "
              f"bomb rejected after {stopped:.2f} s (DecodeTimeout, child killed)")


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS and /proc: Linux")
def test_the_memory_bound_stops_a_bomb_and_names_it(tmp_path, clip_path, capsys):
    bomb = tmp_path / "bomb.flv"
    bomb.write_bytes(hostile.bomb())
    eight_k = tmp_path / "8k.mp4"
    eight_k.write_bytes(hostile.encode("libx264", "mp4", size=(7680, 4320), frames=2, flat=True,
                                       options={"preset": "ultrafast"}))
    allowance = 256 << 20
    timings = {}
    with DecodePool(processes=1, memory_bytes=allowance) as pool:
        for name, path, limits in (("bomb", bomb, Limits(max_decode_s=30)),
                                   ("8K frames, no area limit", eight_k,
                                    Limits(max_decode_s=30, max_frame_area=None))):
            t0 = time.perf_counter()
            with pytest.raises(DecodeMemoryExceeded, match="256 MiB") as err:
                info = pool.probe(path, limits)
                pool.decode_frames(path, 8, short_side=128, info=info, limits=limits)
            timings[name] = time.perf_counter() - t0
            assert err.value.limit == allowance and err.value.value >= allowance * 7 // 8
            status = from_video_error(err.value)
            assert (status.status, status.code) == (413, "decode_memory")
            json.dumps(status.payload())
        # with the frame-area limit on, the 8K file is refused for its frames, not for memory
        with pytest.raises(FrameTooLarge):
            pool.probe(eight_k, Limits())
        stats = DecodeStats()
        frames = pool.decode_frames(clip_path, 8, short_side=128, stats=stats)
        assert frames.shape == (8, 128, 171, 3) and stats.frames_decoded >= 8
        assert pool.restarts >= 2
    with capsys.disabled():
        print(f"\nmemory bound {allowance >> 20} MiB: " + "; ".join(
            f"{k} rejected after {v:.2f} s (DecodeMemoryExceeded)" for k, v in timings.items()))


def test_a_decoder_killed_from_outside_costs_a_retry_not_an_error(tmp_path, clip_path):
    with DecodePool(processes=1, memory_bytes=8 << 30) as pool:
        pool.probe(clip_path)
        [pid] = pool.pids
        # a slow call (the bomb takes 1.5-2 s to open); its process is killed under it
        path = tmp_path / "bomb.flv"
        path.write_bytes(hostile.bomb(4))
        threading.Timer(0.2, os.kill, (pid, signal.SIGKILL)).start()
        info = pool.probe(path, Limits(max_decode_s=30, max_frame_area=None))
        assert info.width > 0 and pool.restarts == 1 and pool.pids != [pid]
        # and SIGTERM, which a supervisor sends the whole process tree, is ignored
        [pid] = pool.pids
        os.kill(pid, signal.SIGTERM)
        assert pool.probe(clip_path).width == 320 and pool.pids == [pid]


def test_a_probe_waiting_for_a_decoder_goes_before_the_decodes_waiting(tmp_path, clip_path):
    # the scheduler knows a request only once it is probed: a probe (milliseconds) must not
    # wait behind queued decodes (a clip each)
    slow = write_test_video(tmp_path / "slow.mp4", 480, 10.0, gop=300)  # ~0.16 s to decode
    done = {}

    def run(name, call):
        call()
        done[name] = time.monotonic()

    with DecodePool(processes=1) as pool:
        pool.probe(clip_path)
        calls = [("busy", lambda: pool.decode_frames(slow, 8)),
                 ("decode", lambda: pool.decode_frames(slow, 8)),
                 ("probe", lambda: pool.probe(clip_path))]
        threads = [threading.Thread(target=run, args=call) for call in calls]
        for t in threads:   # in this order, each waiting before the next comes
            t.start()
            time.sleep(0.02)
        for t in threads:
            t.join()
    assert done["busy"] < done["probe"] < done["decode"], done


def test_a_file_that_brings_two_decoders_down_is_a_corrupt_video(tmp_path, clip_path):
    path = tmp_path / "bomb.flv"
    path.write_bytes(hostile.bomb())
    stop = threading.Event()

    def crash_every_decoder():  # as a decoder bug that this file triggers would
        seen = {}
        while not stop.wait(0.05):
            for pid in decoding_processes(os.getpid()):
                # 0.6 s after it appeared: started (~0.3 s), and busy with the 2 s bomb
                if time.monotonic() - seen.setdefault(pid, time.monotonic()) > 0.6:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGSEGV)

    with DecodePool(processes=1, memory_bytes=8 << 30) as pool:
        pool.probe(clip_path)
        killer = threading.Thread(target=crash_every_decoder, daemon=True)
        killer.start()
        try:
            with pytest.raises(CorruptVideo, match="crashed on this file twice.*SIGSEGV"):
                pool.probe(path, Limits(max_decode_s=30))
        finally:
            stop.set()
            killer.join()
        assert pool.probe(clip_path).width == 320  # replaced


def test_a_child_is_replaced_after_max_calls_and_the_answers_do_not_change(clip_path):
    inline = InlineDecoder().decode_frames(clip_path, 8, short_side=128)
    def idle_pid(pool):  # a replacement starts in the background: wait for it
        deadline = time.monotonic() + 30
        while not pool.pids and time.monotonic() < deadline:
            time.sleep(0.02)
        return pool.pids[0]

    with DecodePool(processes=1, max_calls=3) as pool:
        pool.start()
        seen = []
        for _ in range(7):
            seen.append(idle_pid(pool))
            np.testing.assert_array_equal(pool.decode_frames(clip_path, 8, short_side=128),
                                          inline)
        deadline = time.monotonic() + 30
        while pool.recycled < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.recycled == 2 and pool.restarts == 0
        # calls 1-3 in the first child, 4-6 in the second, 7 in the third
        assert seen[0] == seen[2] != seen[3] == seen[5] != seen[6]
    with pytest.raises(ValueError, match="max_calls"):
        DecodePool(max_calls=0)


def test_a_niced_pool_decodes_the_same_frames_in_processes_that_yield_the_cores(clip_path):
    base = os.getpriority(os.PRIO_PROCESS, 0)
    with DecodePool(processes=1) as plain, DecodePool(processes=1, nice=7) as niced:
        a = plain.decode_frames(clip_path, 4, short_side=64)
        b = niced.decode_frames(clip_path, 4, short_side=64)
        assert np.array_equal(a, b)
        [p], [n] = plain.pids, niced.pids
        assert os.getpriority(os.PRIO_PROCESS, p) == base
        assert os.getpriority(os.PRIO_PROCESS, n) == min(19, base + 7)
    with pytest.raises(ValueError, match="nice"):
        DecodePool(nice=20)


def test_isolated_decoding_equals_inline_and_its_overhead_is_small(clip_path, capsys):
    inline, limits = InlineDecoder(), Limits()
    with DecodePool(processes=1) as pool:
        a = pool.decode_frames(clip_path, 8, short_side=128, info=pool.probe(clip_path, limits),
                               limits=limits)
        b = inline.decode_frames(clip_path, 8, short_side=128, limits=limits)
        np.testing.assert_array_equal(a, b)
        times = {"inline": [], "process": []}
        for _ in range(25):  # interleaved, so that a load change hits both alike
            for name, dec in (("inline", inline), ("process", pool)):
                t0 = time.perf_counter()
                info = dec.probe(clip_path, limits)
                dec.decode_frames(clip_path, 8, short_side=128, info=info, limits=limits)
                times[name].append((time.perf_counter() - t0) * 1e3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    overhead = med["process"] - med["inline"]
    with capsys.disabled():
        print(f"\nprobe + decode of 8 frames at 128 px (320x240 H.264), median of 25: inline "
              f"{med['inline']:.1f} ms, isolated {med['process']:.1f} ms: overhead "
              f"{overhead:+.1f} ms per request")
    assert overhead < 30, med  # ~1 ms measured; lenient for a loaded machine


def test_isolation_settings_errors_and_the_shared_decode_time(clip_path):
    s = Settings.from_env({"STRETCHYSNAKE_DECODE_ISOLATION": "Inline",
                           "STRETCHYSNAKE_DECODE_MEMORY_MB": "512"})
    assert (s.decode_isolation, s.decode_memory_mb) == ("inline", 512)
    assert Settings().decode_isolation == "process" and Settings().decode_memory_mb == 2048
    with pytest.raises(SettingsError) as e:
        Settings.from_env({"STRETCHYSNAKE_DECODE_ISOLATION": "thread",
                           "STRETCHYSNAKE_DECODE_MEMORY_MB": "1"})
    assert "DECODE_ISOLATION" in str(e.value) and "DECODE_MEMORY_MB" in str(e.value)
    err = from_video_error(DecodeMemoryExceeded(None, 1 << 30, "needs more memory"))
    assert (err.status, err.code) == (413, "decode_memory")
    assert json.loads(json.dumps(err.payload()))["detail"]["value"] is None
    with pytest.raises(TypeError, match="path or bytes"), open(__file__, "rb") as f:
        DecodePool().probe(f)
    # a request's decoding shares one max_decode_s: decode gets what opening the file left
    stages = Stages(None, [], None, None, Limits(max_decode_s=1.0), None)
    assert stages.decode_limits(0.7).max_decode_s == pytest.approx(0.3)
    assert stages.decode_limits(5.0).max_decode_s == pytest.approx(0.1)
    assert stages.decode_limits(0.0).max_decode_s == 1.0
