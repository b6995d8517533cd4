"""benchmarks/serve_load.py against the real `bentoml serve` process (issues 5 and 7): a few
requests at concurrency 2, then a short soak with hostile uploads; the JSON it writes, and no
5xx. The tiny model of tests/test_service.py (2 layers x 32 wide, 4 profiled configurations),
clips of 16 frames at 64 px, one torch thread."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import serve_load  # noqa: E402
from serving.testing import serve, server_env, tiny_checkpoint  # noqa: E402
from serving.testing import TINY_CONFIGS as CONFIGS, TINY_LABELS as LABELS  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py
BUDGETS = "ms:60000,gflops:0.03,none"


def test_load_and_soak_against_the_real_server(tmp_path):
    _, ckpt, profile = tiny_checkpoint(tmp_path, LABELS, CONFIGS)
    out = tmp_path / "results"
    clips = ["--clips", "2", "--clip-size", "64", "--clip-frames", "16", "--budgets", BUDGETS,
             "--out-dir", str(out)]

    # a labelled test split of two clips of the tiny model's classes, for --frontier
    clip_paths = serve_load.render_clips(tmp_path / "clips", 2, 64, 16, seed=0)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,split\n" + "".join(
        f"clips/{c.name},{label},test\n" for c, label in zip(clip_paths, LABELS)))
    frontier_out = tmp_path / "frontier"

    with serve(server_env(tmp_path, ckpt, profile), tmp_path / "server.log") as server:
        assert serve_load.main(["--url", server.url, "--concurrency", "2", "--requests", "6",
                                "--warmup", "1", *clips]) == 0
        assert serve_load.main(["--url", server.url, "--concurrency", "1", "--data",
                                str(manifest), "--budgets", "ms:60000,gflops:0.03", "--frontier",
                                "--warmup", "0", "--out-dir", str(frontier_out),
                                "--no-plot"]) == 0
        # the verdict is the exit status: 0 when no check failed
        assert serve_load.main(["--url", server.url, "--soak", "3", "--concurrency", "2",
                                "--hostile", "0.4", "--soak-warmup", "1",
                                "--server-pid", str(server.proc.pid),
                                "--server-tmpdir", str(tmp_path / "uploads"), "--no-plot",
                                *clips]) == 0

    load = json.loads((out / "serve_load.json").read_text())
    assert load["mode"] == "load" and load["budgets"] == BUDGETS.split(",")
    assert (out / "serve_load.png").stat().st_size > 0
    [level] = load["levels"]
    assert level["concurrency"] == 2 and level["all"]["requests"] == 6
    assert level["all"]["ok"] == 6 and level["all"]["errors_by_status"] == {}
    rows = {r["budget"]: r for r in level["budgets"]}
    assert list(rows) == BUDGETS.split(",") and all(r["requests"] == 2 for r in rows.values())
    for r in rows.values():
        assert set(r["client_ms"]) == {"p50", "p95", "p99"} and r["client_ms"]["p50"] > 0
        assert r["server_total_ms"]["p50"] > 0 and r["overhead_ms_p50"] >= 0
    # 60 s and 0.03 GFLOPs are feasible for the tiny model and met; no budget: no hit rate
    assert rows["ms:60000"]["hit_rate"] == 1 and rows["gflops:0.03"]["hit_rate"] == 1
    assert rows["ms:60000"]["met_at_client"] == 1 and rows["gflops:0.03"]["met_at_client"] is None
    assert rows["gflops:0.03"]["configs"] == {"8x112/16": 2}
    assert rows["none"]["hit_rate"] is None and rows["none"]["configs"] == {"16x112/16": 2}
    assert load["tmp_files_left"] is None  # --url without --server-tmpdir: unknown

    frontier = json.loads((frontier_out / "serve_load.json").read_text())["frontier"]
    assert frontier["clips"] == 2 and len(frontier["fixed"]) == len(CONFIGS)
    rows = {r["budget"]: r for r in frontier["budgets"]}
    cheap = {f["config"] for f in frontier["fixed"] if f["gflops"] <= 0.03}
    assert set(rows["gflops:0.03"]["fixed_that_fit"]) == cheap and len(cheap) == 3
    assert rows["gflops:0.03"]["best_fixed"] in cheap

    soak = json.loads((out / "serve_soak.json").read_text())
    assert soak["mode"] == "soak" and soak["concurrency"] == 2
    assert soak["status_5xx"] == 0 and soak["checks"]["no_5xx"]
    assert soak["valid"]["requests"] > 0 and soak["valid"]["errors_by_status"] == {}
    hostile = soak["hostile"]
    assert hostile["requests"] >= len(serve_load.HOSTILE_KINDS)  # every kind at least once
    for kind in serve_load.HOSTILE_KINDS:
        statuses = hostile["by_kind"][kind]
        assert statuses and all(400 <= int(s) < 500 for s in statuses), (kind, statuses)
    assert hostile["not_4xx"] == {} and soak["checks"]["hostile_all_4xx"]
    assert soak["tmp_files_left"] == [] and soak["checks"]["no_temp_files_left"]
    rss = soak["rss_mb"]
    assert rss["samples"] and rss["max"] >= rss["start"] > 50
    assert rss["warmup_s"] == 1 and rss["after_warmup"] > 50
    assert isinstance(rss["growth_after_warmup"], float)
    assert soak["checks"]["rss_growth_under_10pct"] is None  # 2 s after warm-up: not judged
    assert {"root", "workers", "decoders"} <= {r for _, by in rss["by_role"] for r in by}
    assert len(rss["worker_pids"]) == 1 and soak["checks"]["no_worker_restarts"]
    assert {r["budget"] for r in soak["budgets"]} == set(BUDGETS.split(","))
    assert all(r["client_ms"]["p99"] is None or r["client_ms"]["p99"] > 0 for r in soak["budgets"])
    assert "Traceback" not in (tmp_path / "server.log").read_text(errors="replace")


def test_the_leak_verdict_judges_growth_after_warm_up_over_a_long_enough_span():
    def report(samples, warmup_s=60.0):
        after = [mb for t, mb in samples if t >= warmup_s]
        return {"samples": samples, "warmup_s": warmup_s,
                "growth_after_warmup": max(after) / after[0] - 1 if len(after) > 1 else None}

    warm = [(t, 100 + t) for t in range(0, 60, 5)]  # grows while warming up: not counted
    flat = warm + [(t, 160 + (t % 10) / 5) for t in range(60, 600, 5)]
    leak = warm + [(t, 160 * (1 + 0.2 * (t - 60) / 540)) for t in range(60, 600, 5)]
    assert serve_load.leak_verdict(report(flat)) is True
    assert serve_load.leak_verdict(report(leak)) is False
    assert serve_load.leak_verdict(report(leak[:20])) is None  # 35 s after warm-up
    assert serve_load.leak_verdict(report([(0, 100)])) is None


def test_frontier_compares_the_budgeted_server_with_every_fixed_configuration(tmp_path):
    import numpy as np

    from video.synthetic import encode_mp4, render_clip

    _, ckpt, profile = tiny_checkpoint(tmp_path, LABELS, CONFIGS)
    data = tmp_path / "data"
    data.mkdir()
    rows = ["path,label,split"]
    for i, label in enumerate(LABELS[:3]):
        frames = render_clip("move_e", np.random.default_rng(i), size=64, frames=16)
        encode_mp4(frames, str(data / f"c{i}.mp4"))
        rows.append(f"c{i}.mp4,{label},test")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "results"
    with serve(server_env(tmp_path, ckpt, profile), tmp_path / "server.log") as server:
        assert serve_load.main(["--url", server.url, "--data", str(data / "manifest.csv"),
                                "--concurrency", "1", "--budgets", "ms:60000,gflops:0.03,none",
                                "--frontier", "--warmup", "0", "--no-plot",
                                "--out-dir", str(out)]) == 0
    frontier = json.loads((out / "serve_load.json").read_text())["frontier"]
    fixed = {f["config"]: f for f in frontier["fixed"]}
    assert frontier["clips"] == 3 and len(fixed) == len(CONFIGS)
    assert all(f["ok"] == 3 and 0 <= f["top1"] <= 1 for f in fixed.values())
    rows = {r["budget"]: r for r in frontier["budgets"]}
    assert set(rows) == {"ms:60000", "gflops:0.03"}  # "none" has nothing to compare with
    for name, row in rows.items():   # brute force: the best of what fits
        fits = [f for f in fixed.values() if name.startswith("ms") or f["gflops"] <= 0.03]
        assert set(row["fixed_that_fit"]) == {f["config"] for f in fits}
        assert row["best_fixed_top1"] == max(f["top1"] for f in fits)
        assert row["served_at_least_fixed"] is (row["served_top1"] >= row["best_fixed_top1"])
    # with a minute to spare the server runs the most accurate profiled configuration, and the
    # same model on the same clips answers the same as when that configuration is forced
    [served] = rows["ms:60000"]["served_configs"]
    assert served == "16x112/16" and rows["ms:60000"]["served_top1"] == fixed[served]["top1"]


def test_mixed_budgets_both_policies_side_by_side(tmp_path):
    _, ckpt, profile = tiny_checkpoint(tmp_path, LABELS, CONFIGS)
    out = tmp_path / "results"
    assert serve_load.main(["--mixed", "--checkpoint", str(ckpt), "--profile", str(profile),
                            "--threads", "1", "--concurrency", "1,2", "--requests", "8",
                            "--rounds", "2",  # the policies take turns: 4 requests each time
                            "--warmup", "2", "--mix", "ms:60000,ms:1,none", "--clips", "2",
                            "--clip-size", "64", "--clip-frames", "16", "--out-dir", str(out),
                            "--no-plot"]) == 0
    mixed = json.loads((out / "serve_mixed.json").read_text())
    assert mixed["mode"] == "mixed" and mixed["mix"] == ["ms:60000", "ms:1", "none"]
    assert [run["policy"] for run in mixed["runs"]] == ["deadline", "fifo"]
    for run in mixed["runs"]:
        assert run["rounds"] == 2
        assert [level["concurrency"] for level in run["levels"]] == [1, 2]
        for level in run["levels"]:
            assert level["requests"] == 8 and level["ok"] == 8
            rows = {r["budget"]: r for r in level["budgets"]}
            # the same draws for every policy and level; 1 ms is never met, 60 s always
            assert rows["ms:1"]["met"] == 0 and rows["none"]["met"] is None
            assert rows["ms:60000"]["met"] == rows["ms:60000"]["requests"]
            assert level["met"] == rows["ms:60000"]["met"]
            assert level["latency_budgeted"] == rows["ms:60000"]["requests"] + \
                rows["ms:1"]["requests"]
            assert level["effective_accuracy"] is None  # generated clips carry no label
        assert run["server"]["tmp_files_left"] == []
    draws = [[r["requests"] for r in level["budgets"]] for run in mixed["runs"]
             for level in run["levels"]]
    assert all(d == draws[0] for d in draws)
