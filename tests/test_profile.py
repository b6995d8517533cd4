"""serving.profile: the latency profiler's table (validated by the selector's schema), its
command line, the decode-cost model (fit on made-up and on real measurements) and file naming.
Everything is tiny: a 1-layer 32-wide model, a few runs, two small videos."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from model import build_model, count_flops
from model.config import get_config
from serving import decode_cost, devices, latency
from serving import profile as prof
from serving.selector import ProfileError, ProfileTable
from video import DecodeStats, decode_frames, probe

TINY = dict(depth=1, embed_dim=32)


# one torch thread (tests/conftest.py): another process may hold the cores
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_net():
    return build_model("nano", **TINY).eval()


# ---- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, slug", [
    ("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"),
    ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "intel-r-xeon-r-platinum-8375c-cpu-2-90ghz"),
    ("  AMD EPYC 7B13 64-Core Processor ", "amd-epyc-7b13-64-core-processor"),
    ("NVIDIA H200", "nvidia-h200"),
])
def test_profile_name_slugs(name, slug):
    assert devices.profile_name(name) == slug


def test_profile_name_refuses_a_name_without_letters():
    with pytest.raises(ValueError, match="no letters or digits"):
        devices.profile_name(" (@) ")


def test_default_profile_path_is_in_the_repo_profiles_folder():
    path = devices.default_profile_path("cpu")
    assert path.parent == devices.PROFILES and path.parent.name == "profiles"
    assert (path.parent.parent / "serving" / "profile.py").is_file()
    assert path.name == devices.profile_name(devices.cpu_model()) + ".json"
    with pytest.raises(ValueError):
        devices.resolve_device("meta")


# ---- grid ---------------------------------------------------------------------------------------

def test_default_grid_of_nano():
    cfg = get_config("nano")  # 8 frames, 112 px, patch 16: a 7x7 grid, 393 tokens
    configs, skipped = prof.make_grid(cfg)
    assert prof.default_axes(cfg) == ([4, 8, 16, 32], [56, 112, 224])
    # static tokens (56 -> 8, 224 -> 32, native grid 7x7) at every frames, native patch 16 too,
    # and the 2x2 token grid (56 -> 28, 112 -> 56, 224 -> 112)
    for t in (4, 8, 16, 32):
        for px, p in ((56, 8), (112, 16), (224, 32), (56, 16), (56, 28), (112, 56), (224, 112)):
            assert (t, px, p) in configs
    assert {p for t, px, p in configs if px == 56} == {8, 16, 28}
    assert (8, 112, 16) in configs and (8, 224, 16) in configs  # 1569 tokens <= 4 x 393
    assert (16, 224, 16) not in configs and (32, 224, 16) not in configs  # 3137, 6273 tokens
    assert ({(s["frames"], s["pixels"], s["patch"]) for s in skipped}
            == {(16, 224, 16), (32, 224, 16)})
    assert all("max_tokens 1572" in s["reason"] for s in skipped)
    assert configs == sorted(configs) and len(configs) == len(set(configs)) == 30


def test_grid_flags_and_skips():
    cfg = get_config("nano")
    configs, skipped = prof.make_grid(cfg, frames=[4], pixels=[16, 64], patches=[8, 32],
                                      max_tokens=40)
    assert configs == [(4, 16, 8), (4, 64, 32)]  # 17 tokens each
    reasons = {(s["pixels"], s["patch"]): s["reason"] for s in skipped}
    assert reasons[(16, 32)] == "patch larger than the frame"
    assert reasons[(64, 8)].startswith("257 tokens > max_tokens 40")


# ---- timing -------------------------------------------------------------------------------------

def test_time_runs_stops_at_min_runs_or_max_runs():
    calls = []
    times = latency.time_runs(lambda: calls.append(1), warmup=2, min_runs=5, min_seconds=0, max_runs=9)
    assert len(times) == 5 and len(calls) == 7 and all(t >= 0 for t in times)
    times = latency.time_runs(lambda: None, warmup=0, min_runs=2, min_seconds=60, max_runs=11)
    assert len(times) == 11  # the cap wins over min_seconds
    with pytest.raises(ValueError):
        latency.time_runs(lambda: None, min_runs=5, max_runs=4)


def test_time_interleaved_visits_every_function_in_rounds():
    trace = []
    fns = [lambda i=i: trace.append(i) for i in range(3)]
    rounds = []
    times = latency.time_interleaved(fns, warmup=1, min_runs=4, min_seconds=0, max_runs=9, per_round=2,
                                  on_round=rounds.append)
    assert [len(t) for t in times] == [4, 4, 4]
    # warm-up (one call each), then rounds of two calls per function: drift is shared by all
    assert trace == [0, 1, 2] + [0, 0, 1, 1, 2, 2] * 2
    assert rounds == [0, 3]
    capped = latency.time_interleaved(fns[:2], warmup=0, min_runs=2, min_seconds=60, max_runs=5, per_round=3)
    assert [len(t) for t in capped] == [5, 5]
    with pytest.raises(ValueError):
        latency.time_interleaved(fns, min_runs=5, max_runs=4)


def test_summarize_percentiles():
    s = latency.summarize(list(range(1, 101)))  # 1..100 ms
    assert s["p50"] == 50.5
    assert s["p95"] == pytest.approx(95.05) and s["p99"] == pytest.approx(99.01)
    assert (s["min"], s["max"], s["mean"]) == (1, 100, 50.5)


def test_peak_memory_sees_an_allocation():
    import mmap

    def touch_fresh_pages():  # fresh anonymous pages: RSS grows whatever the allocator holds free
        with mmap.mmap(-1, 40 * 2**20) as buf:
            buf.write(b"x" * len(buf))

    mb = latency.peak_memory_mb(touch_fresh_pages, torch.device("cpu"))
    if mb is None:
        pytest.skip("no /proc/self/clear_refs here")
    assert 30 <= mb <= 200


# ---- the table ----------------------------------------------------------------------------------

def test_profile_tiny_model_validates(tiny_net):
    keys = [(2, 32, 16), (4, 32, 8), (2, 48, 16)]
    table = prof.build_table(tiny_net, keys, device="cpu", batch_sizes=[2], warmup=1, min_runs=3,
                             min_seconds=0, show_progress=False, meta={"command": "test"})
    parsed = ProfileTable.from_dict(table)
    assert [c.key for c in parsed.configs] == keys
    assert table["meta"]["batch_sizes"] == [1, 2] and table["meta"]["command"] == "test"
    assert table["meta"]["threads"] == 1 and table["meta"]["device"] == devices.cpu_model()
    assert table["decode_model"] is None
    for c, (t, px, p) in zip(table["configs"], keys):
        assert c["tokens"] == 1 + t * (px // p) ** 2  # 9, 65, 19
        assert c["gflops"] == count_flops(tiny_net.config, t, px, p) > 0
        lat = c["latency_ms"]
        assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert c["runs"] >= 3 and c["accuracy"] is None
        assert c["peak_memory_mb"] is None or c["peak_memory_mb"] >= 0
        b2 = c["batches"]["2"]["latency_ms"]
        assert 0 < b2["p50"] <= b2["p95"] <= b2["p99"]
    assert [c["tokens"] for c in table["configs"]] == [9, 65, 19]
    assert json.loads(json.dumps(table)) == table  # plain JSON


def test_build_table_refuses_an_empty_grid(tiny_net):
    with pytest.raises(ValueError, match="no configurations"):
        prof.build_table(tiny_net, [], device="cpu", show_progress=False)


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "sub" / "table.json"
    argv = ["--preset", "nano", "--out", str(out), "--no-decode", "--frames", "2,4",
            "--pixels", "32", "--patches", "16", "--min-runs", "3", "--min-seconds", "0",
            "--warmup", "1", "--batch-sizes", "1,2", "--threads", "1"]
    assert prof.main(argv) == 0
    table = ProfileTable.load(out)
    assert [c.key for c in table.configs] == [(2, 32, 16), (4, 32, 16)]
    assert [c.tokens for c in table.configs] == [9, 17]
    assert all(0 < c.p50_ms <= c.p95_ms <= c.p99_ms for c in table.configs)
    assert table.decode_model is None and not table.has_accuracy
    meta = table.meta
    assert meta["command"] == "python -m serving.profile " + " ".join(argv)
    assert meta["checkpoint"].startswith("preset:nano") and meta["batch_sizes"] == [1, 2]
    assert meta["model"]["embed_dim"] == 96 and meta["max_tokens"] == 4 * 393
    assert all("2" in c.extra["batches"] for c in table.configs)
    captured = capsys.readouterr()
    assert f"wrote {out}" in captured.out and "4/4" in captured.err and "batch 2: 2/2 configurations" in captured.err


def test_decode_only_refits_the_decode_model_of_a_table_and_keeps_its_configurations(tmp_path,
                                                                                     capsys):
    out = tmp_path / "table.json"
    base = ["--preset", "nano", "--out", str(out), "--frames", "2,4", "--pixels", "32",
            "--patches", "16", "--min-runs", "2", "--min-seconds", "0", "--warmup", "0",
            "--threads", "1", "--quiet"]
    assert prof.main(base + ["--no-decode"]) == 0
    before = json.loads(out.read_text())
    assert prof.main(base + ["--decode-only", "--decode-seconds", "0", "--decode-repeats", "1"]) == 0
    after = json.loads(out.read_text())
    assert after["configs"] == before["configs"] and before["decode_model"] is None
    assert decode_cost.DecodeModel.from_dict(after["decode_model"]).fit["samples"] >= 2
    assert "--decode-only" in after["meta"]["decode_command"]
    assert f"wrote the decode model into {out}" in capsys.readouterr().out
    # refitted from the stored samples: the same fit, no measuring
    assert prof.main(base + ["--decode-refit"]) == 0
    refitted = json.loads(out.read_text())
    assert refitted["decode_model"]["samples"] == after["decode_model"]["samples"]
    assert refitted["decode_model"]["coef_ms"] == pytest.approx(after["decode_model"]["coef_ms"])
    with pytest.raises(SystemExit):
        prof.main(base[:2] + ["--out", str(tmp_path / "none.json"), "--decode-only"])
    assert "needs a table at --out" in capsys.readouterr().err


def test_camera_clips_fit_half_and_report_the_other_half(tmp_path, monkeypatch):
    """With camera clips the model is fitted on the test videos and alternate camera clips, and
    the held-out report is that model's error (and the test videos' model's) on the others."""
    from video.camera import CameraClip

    clips = [CameraClip(160, 90, 24, 2, 0.5), CameraClip(128, 96, 30, 2, 1.0),
             CameraClip(160, 90, 24, 2, 0.5, "libx265"), CameraClip(96, 128, 30, 2, 0.5,
                                                                     rotation=90)]
    monkeypatch.setattr(prof, "realistic_set", lambda: clips)
    d = prof.profile_decode([2, 4], [32], video_sides=(48,), durations=(1.0,), repeats=1,
                            show_progress=False, camera_dir=tmp_path / "camera")
    assert d["videos"]["camera"] == {"fit": [clips[0].name, clips[2].name],
                                     "heldout": [clips[1].name, clips[3].name]}
    held = d["heldout"]["samples"]
    assert {s["codec"] for s in held} == {"h264"}
    assert {s["coded_width"] for s in held} == {128, 96} and {s["width"] for s in held} == {128}
    # fitted on the test videos and the other half, never on a held-out clip
    camera = {s["file"] for s in d["samples"]} & {c.name for c in clips}
    assert camera == {clips[0].name, clips[2].name}
    assert {s["file"] for s in held} == {clips[1].name, clips[3].name}
    tests = [s for s in d["samples"] if s["file"] not in camera]
    assert {s["codec"] for s in tests} == {"h264", "mpeg4"} and len(tests) >= 2
    today = decode_cost.DecodeModel.fit_samples(tests)
    assert d["heldout"]["test_videos_only"] == decode_cost.heldout_report(today, held)
    model = decode_cost.DecodeModel.from_dict(d)
    assert d["heldout"]["this_model"] == decode_cost.heldout_report(model, held)
    assert d["heldout"]["test_videos_only"]["samples"] == len(held)
    assert "this_model" in prof.heldout_table(d["heldout"])
    assert prof.fit_decode(d)["heldout"]["this_model"] == d["heldout"]["this_model"]
    # written once: a second run reuses the files
    stamp = (tmp_path / "camera" / clips[0].name).stat().st_mtime_ns
    prof.profile_decode([2], [32], video_sides=(48,), durations=(1.0,), repeats=1,
                        show_progress=False, camera_dir=tmp_path / "camera")
    assert (tmp_path / "camera" / clips[0].name).stat().st_mtime_ns == stamp


@pytest.mark.parametrize("argv, message", [
    (["--preset", "nano", "--frames", "4,x"], "comma-separated integers"),
    (["--preset", "nano", "--pixels", "0"], "positive integers"),
    (["--preset", "nano", "--min-runs", "5", "--max-runs", "2"], "smaller than --min-runs"),
    (["--preset", "nano", "--min-seconds", "-1"], ">= 0"),
    (["--preset", "huge"], "invalid choice"),
    (["--frames", "4"], "one of the arguments --checkpoint --preset is required"),
    (["--preset", "nano", "--pixels", "8", "--patches", "16", "--no-decode"],
     "every configuration of the grid was skipped"),
])
def test_cli_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        prof.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_cli_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        prof.main(["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "t.json")])
    assert e.value.code == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()


# ---- decode model -------------------------------------------------------------------------------

def _meta(codec, short, seconds, gop_s, fps=25, kbytes_per_frame=5.0):
    w, h = 2 * round(short * 8 / 9), short
    n = round(seconds * fps)
    return {"codec": codec, "width": w, "height": h, "coded_width": w, "coded_height": h,
            "fps": fps, "num_frames": n, "duration_s": seconds,
            "size_bytes": int(kbytes_per_frame * 1e3 * n),
            "keyframes": None, "keyframe_interval_s": gop_s}


def _indexed(meta):
    """meta with the index's keyframes (regular, each 6 mean frames): keyframe mode applies."""
    gop_s = meta["keyframe_interval_s"]
    return {**meta, "keyframes": round(meta["duration_s"] / gop_s), "keyframe_max_gap_s": gop_s,
            "keyframe_bytes": 6 * meta["size_bytes"] / meta["num_frames"]}


KNOWN = decode_cost.DecodeModel(2.0, {"decoded_frames": 0.05, "decoded_mbytes": 20.0,
                                      "keyframe_mbytes": 14.0, "seeks": 0.4,
                                      "output_frames": 0.15, "converted_mpx": 2.5},
                                {"h264": 1.2, "mpeg4": 0.5})


def _synthetic_samples(model, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    samples = []
    for codec in ("h264", "mpeg4"):
        for short in (128, 240, 480):
            for seconds, gop_s, kb in ((2.0, 0.48, 9.0), (6.0, None, 4.0), (10.0, 2.0, 6.0)):
                meta = _meta(codec, short, seconds, gop_s, kbytes_per_frame=kb * short / 240)
                for frames in (4, 8, 16, 32):
                    for pixels in (56, 224):
                        ms = model.predict_meta(meta, frames, pixels)
                        ms *= 1 + noise * rng.standard_normal()
                        samples.append({**meta, "frames": frames, "pixels": pixels, "ms": ms})
                if gop_s:  # and keyframe mode where every segment holds a keyframe
                    for frames in (2, 4):
                        indexed = _indexed(meta)
                        ms = model.predict_meta(indexed, frames, 112, "keyframe")
                        samples.append({**indexed, "frames": frames, "pixels": 112,
                                        "decode": "keyframe", "ms": ms})
    return samples


def test_decode_model_fit_recovers_known_coefficients():
    fitted = decode_cost.DecodeModel.fit_samples(_synthetic_samples(KNOWN))
    assert fitted.const_ms == pytest.approx(KNOWN.const_ms, rel=1e-6)
    for t in decode_cost.TERMS:
        assert fitted.coef_ms[t] == pytest.approx(KNOWN.coef_ms[t], rel=1e-6), t
    assert fitted.per_mpx_ms == pytest.approx(KNOWN.per_mpx_ms, rel=1e-6)
    assert fitted.fit["median_abs_rel_error"] < 1e-6 and fitted.fit["samples"] == 144 + 24
    # with 5% noise the coefficients that carry most of the time stay close
    noisy = decode_cost.DecodeModel.fit_samples(_synthetic_samples(KNOWN, noise=0.05, seed=1))
    assert noisy.per_mpx_ms["h264"] == pytest.approx(1.2, rel=0.2)
    assert noisy.coef_ms["converted_mpx"] == pytest.approx(2.5, rel=0.2)
    assert 0.01 < noisy.fit["median_abs_rel_error"] < 0.06


def test_decode_model_coefficients_stay_non_negative():
    # times that fall with the work: an unconstrained fit would go negative
    samples = [{**_meta("h264", 240, 4.0, 0.5), "frames": f, "pixels": 112, "ms": 50.0 / f}
               for f in (2, 4, 8, 16)]
    m = decode_cost.DecodeModel.fit_samples(samples)
    assert m.const_ms >= 0 and min(m.coef_ms.values()) >= 0 and min(m.per_mpx_ms.values()) >= 0
    assert all(m.predict_meta(s, s["frames"], 112) > 0 for s in samples)


def test_decode_model_round_trip_and_validation():
    fitted = decode_cost.DecodeModel.fit_samples(_synthetic_samples(KNOWN))
    d = json.loads(json.dumps(fitted.to_dict()))
    back = decode_cost.DecodeModel.from_dict({**d, "samples": []})  # extra keys ignored
    assert back == fitted and back.fit == fitted.fit
    meta = _meta("h264", 240, 6.0, 0.48)
    assert back.predict_meta(meta, 8, 112) == pytest.approx(fitted.predict_meta(meta, 8, 112))
    # an unmeasured codec costs as much per pixel as the dearest measured one
    assert back.codec_mpx_ms("vp9") == back.per_mpx_ms["h264"]
    with pytest.raises(ValueError) as e:
        decode_cost.DecodeModel.from_dict({**d, "kind": "other", "const_ms": -1,
                                    "per_mpx_ms": {"h264": math.inf}})
    msg = str(e.value)
    assert "kind" in msg and "const_ms" in msg and "per_mpx_ms.h264" in msg
    with pytest.raises(ValueError, match="coef_ms"):
        decode_cost.DecodeModel.from_dict({**d, "coef_ms": {"seeks": 1.0}})
    # a table fitted before keyframe bytes had a coefficient of their own: one for both
    v1 = {k: v for k, v in d["coef_ms"].items() if k != "keyframe_mbytes"}
    old = decode_cost.DecodeModel.from_dict({**d, "coef_ms": v1})
    assert old.coef_ms["keyframe_mbytes"] == old.coef_ms["decoded_mbytes"]
    with pytest.raises(ValueError, match="at least 2"):
        decode_cost.DecodeModel.fit_samples([])


def test_decode_workload_matches_the_sparse_decoder_on_paper():
    meta = _meta("h264", 240, 4.0, 0.48)  # 100 frames, a keyframe every 12
    # middles at frames 12, 37, 62, 87; keyframes at 12, 36, 60, 84: a seek and 1, 2, 3, 4
    # frames each, plus the frames a seek decodes past the target
    w = decode_cost.decode_workload(meta, 4)
    assert w["seeks"] == 4
    assert w["decoded_frames"] == pytest.approx(1 + 2 + 3 + 4 + decode_cost.SEEK_EXTRA_FRAMES * 4)
    # one keyframe: from the start to the last middle, once
    one_gop = decode_cost.decode_workload({**meta, "keyframe_interval_s": None}, 4)
    assert one_gop["seeks"] == 1
    assert one_gop["decoded_frames"] == pytest.approx(88 + decode_cost.SEEK_EXTRA_FRAMES)
    assert decode_cost.decode_workload(meta, 200)["output_frames"] == 100  # never more than the video


@pytest.mark.parametrize("frames, gop", [(4, 12), (8, 25), (3, 7), (6, 100)])
def test_decode_workload_follows_the_real_reader(tmp_path, frames, gop):
    """The pictures the reader decodes on a real video (no B-frames: nothing skipped) are the
    workload's, give or take the one picture past each target that tells it the target is the
    one on screen."""
    path = decode_cost.write_test_video(tmp_path / "v.mp4", 48, 4.0, gop=gop, fps=25,
                                        bframes=0)
    info = probe(path)
    stats = DecodeStats()
    decode_frames(path, frames, info=info, stats=stats)
    w = decode_cost.decode_workload(decode_cost.video_meta(info), frames)
    expected = w["decoded_frames"] - decode_cost.SEEK_EXTRA_FRAMES * w["seeks"]
    assert expected <= stats.frames_decoded <= expected + frames + 1
    assert stats.seeks <= w["seeks"]


def test_keyframe_workload_is_one_keyframe_per_frame_where_every_segment_holds_one():
    meta = {**_meta("h264", 240, 4.0, 0.48), "keyframes": 9, "keyframe_max_gap_s": 0.48,
            "keyframe_bytes": 40_000}
    assert decode_cost.keyframe_mode_applies(meta, 8)        # segments of 0.5 s
    assert not decode_cost.keyframe_mode_applies(meta, 16)   # 0.25 s: some hold no keyframe
    assert not decode_cost.keyframe_mode_applies({**meta, "keyframes": None}, 4)
    w = decode_cost.decode_workload(meta, 8, decode="keyframe")
    assert w["decoded_frames"] == w["seeks"] == 8
    assert w["keyframe_mbytes"] == pytest.approx(8 * 0.04) and w["decoded_mbytes"] == 0
    # no keyframe sizes (Matroska's index): a share of a GOP's bytes
    unsized = decode_cost.decode_workload({**meta, "keyframe_bytes": None}, 8, decode="keyframe")
    assert unsized["keyframe_mbytes"] == pytest.approx(8 * decode_cost.KEYFRAME_SHARE * 12 * 5e-3)
    assert decode_cost.decode_workload(meta, 8)["keyframe_mbytes"] == 0  # exact: runs only
    # where it does not apply, keyframe mode decodes (and costs) as exact
    assert decode_cost.decode_workload(meta, 16, decode="keyframe") == \
        decode_cost.decode_workload(meta, 16)
    assert KNOWN.predict_meta(meta, 8, 112, "keyframe") < KNOWN.predict_meta(meta, 8, 112)
    with pytest.raises(ValueError, match="decode"):
        decode_cost.decode_workload(meta, 8, decode="fast")


def test_decode_measurement_on_real_videos(tmp_path):
    paths = [decode_cost.write_test_video(tmp_path / "a.mp4", 48, 1.0, "libx264", gop=6, fps=12),
             decode_cost.write_test_video(tmp_path / "b.mp4", 64, 1.0, "mpeg4", gop=24, fps=12)]
    infos = [probe(p) for p in paths]
    assert [(i.codec, i.coded_width, i.coded_height, i.num_frames) for i in infos] == \
        [("h264", 86, 48, 12), ("mpeg4", 114, 64, 12)]
    samples = decode_cost.measure_decode(paths, [2, 4, 8], [32], repeats=1)
    assert all(s["ms"] > 0 and s["frames_decoded"] >= 1 for s in samples)
    # every video, frames and side exactly; by keyframes only where each segment holds one
    # (a: a keyframe every 0.5 s, so 2 frames; b: one keyframe)
    assert sorted((s["codec"], s["frames"], s["decode"]) for s in samples) == sorted(
        [(c, t, "exact") for c in ("h264", "mpeg4") for t in (2, 4, 8)]
        + [("h264", 2, "keyframe")])
    model = decode_cost.DecodeModel.fit_samples(samples)
    for info in infos:
        assert model.predict_ms(info, 4, 32) > 0
        assert model.predict_ms(info, 4) > 0
    fit = model.fit
    assert fit["samples"] == 7 and fit["codecs"] == ["h264", "mpeg4"]
    assert fit["median_abs_rel_error"] >= 0
    # the table accepts it as its decode_model
    table = {"meta": {"device": "x", "threads": 1, "torch": "t", "date": "d", "command": "c"},
             "configs": [{"frames": 2, "pixels": 32, "patch": 16, "tokens": 9, "gflops": 0.1,
                          "latency_ms": {"p50": 1, "p95": 2, "p99": 3}}],
             "decode_model": model.to_dict()}
    parsed = ProfileTable.from_dict(table)
    assert decode_cost.DecodeModel.from_dict(parsed.decode_model) == model


def test_profile_decode_writes_the_table_key():
    d = prof.profile_decode([2, 4], [32], video_sides=(48,), durations=(1.0,), repeats=1,
                            show_progress=False)
    model = decode_cost.DecodeModel.from_dict(d)
    assert d["videos"]["measured"] == d["videos"]["planned"] == 4
    # keyframe mode where 2 segments of 0.5 s each hold a keyframe (one every 0.48 s)
    keyframe = [s for s in d["samples"] if s["decode"] == "keyframe"]
    assert d["videos"]["keyframe_measured"] == len(keyframe) == 2
    assert {(s["frames"], s["frames_decoded"]) for s in keyframe} == {(2, 2)}
    assert set(model.per_mpx_ms) == {"h264", "mpeg4"}
    assert "median_abs_rel_error" in d["fit"]


def test_table_schema_error_is_caught_before_writing(tiny_net, monkeypatch):
    # a broken entry must fail loudly, not write a table the server refuses
    monkeypatch.setattr(prof, "count_flops", lambda *a, **k: 0.0)
    with pytest.raises(ProfileError, match="gflops"):
        prof.build_table(tiny_net, [(2, 32, 16)], device="cpu", min_runs=1, min_seconds=0,
                         show_progress=False)
