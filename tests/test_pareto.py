"""benchmarks/pareto.py: the frontier marking, the efficiency check, and a whole run on a tiny
synthetic dataset, a tiny checkpoint and a tiny profile (accuracy merged into the profile)."""
import csv
import json
import random
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import pareto  # noqa: E402
from model import build_model, save_checkpoint  # noqa: E402
from serving.profile import build_table, write_table  # noqa: E402
from serving.selector import ProfileTable  # noqa: E402
from training.data import load_samples  # noqa: E402
from training.evaluate import top1  # noqa: E402
from video.synthetic import CLASSES, generate  # noqa: E402


def test_pareto_flags_match_brute_force_definition():
    rng = random.Random(0)
    for _ in range(200):
        points = [(rng.choice([1, 2, 3, 4]), rng.choice([0.1, 0.5, 0.9])) for _ in range(rng.randint(1, 7))]
        flags = pareto.pareto_flags(points)
        for (c, a), flag in zip(points, flags):
            dominated = any((c2 <= c and a2 >= a) and (c2, a2) != (c, a) for c2, a2 in points)
            assert flag == (not dominated)
    assert pareto.pareto_flags([(1, 0.5), (2, 0.5), (3, 0.9)]) == [True, False, True]


def _row(frames, gflops, p50, top1):
    return {"frames": frames, "pixels": 112, "patch": 16, "gflops": gflops, "latency_p50_ms": p50, "top1": top1}


def test_efficiency_check():
    native = (8, 112, 16)
    rows = [_row(8, 10.0, 30.0, 0.92), _row(4, 0.9, 9.0, 0.90), _row(2, 0.5, 5.0, 0.80), _row(1, 2.0, 9.0, 0.95)]
    found = pareto.efficiency_check(rows, native)["found"]
    assert found["frames"] == 4 and found["speedup"] == pytest.approx(30 / 9)
    assert found["points_below_best"] == pytest.approx(5.0)  # best is 0.95
    rows[1]["latency_p50_ms"] = 11.0  # only 2.7x faster now
    assert pareto.efficiency_check(rows, native)["found"] is None
    rows[0]["latency_p50_ms"] = None
    assert "latency" in pareto.efficiency_check(rows, native)["why_not"]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pareto")
    classes = CLASSES[:3]
    generate(str(root / "data"), 18, seed=3, size=64, frames=16, workers=1, classes=classes, progress=False)
    ckpts = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = build_model("nano", num_classes=3, depth=1, embed_dim=32, img_size=64, num_frames=4)
        ckpts.append(save_checkpoint(net, root / f"ckpt{seed}", labels=list(classes)))
    configs = [(2, 32, 8), (4, 64, 16), (4, 32, 16), (8, 64, 16)]
    table = build_table(net, configs, batch_sizes=(1,), warmup=1, min_runs=2, min_seconds=0.0,
                        max_runs=3, show_progress=False)
    profile = write_table(table, root / "profile.json")
    return root, [Path(c) for c in ckpts], profile, configs


def test_whole_run_writes_results_and_merges_accuracy(tiny_world):
    root, (a, b), profile, configs = tiny_world
    out = root / "results"
    payload = pareto.main(["--checkpoint", f"first={a}", "--checkpoint", f"second={b}",
                           "--data", str(root / "data" / "manifest.csv"), "--profile", str(profile),
                           "--out-dir", str(out), "--batch-size", "4"])
    rows = payload["rows"]
    assert len(rows) == 2 * len(configs)
    assert {r["checkpoint"] for r in rows} == {"first", "second"}
    # the frontier is the brute-force one, per checkpoint
    for name in ("first", "second"):
        mine = [r for r in rows if r["checkpoint"] == name]
        assert [r["pareto"] for r in mine] == pareto.pareto_flags([(r["gflops"], r["top1"]) for r in mine])
        assert any(r["pareto"] for r in mine)
    # accuracy agrees with the plain evaluator, and is merged into the profile for the first one
    samples, classes = load_samples(root / "data" / "manifest.csv", "test")
    from model import load_checkpoint
    row = next(r for r in rows if r["checkpoint"] == "first" and (r["frames"], r["pixels"], r["patch"]) == (4, 32, 16))
    assert row["top1"] == pytest.approx(top1(load_checkpoint(a), samples, classes, 4, 32, 16))
    merged = ProfileTable.load(profile)
    assert merged.has_accuracy
    got = {(c.frames, c.pixels, c.patch): c.accuracy for c in merged.configs}
    assert got == {(r["frames"], r["pixels"], r["patch"]): r["top1"] for r in rows if r["checkpoint"] == "first"}
    assert json.loads(profile.read_text())["meta"]["accuracy"]["checkpoint"] == str(a)
    with open(out / "pareto.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "pareto.json").read_text())["clips"] == len(samples)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="not found"):
        pareto.main(["--checkpoint", f"x={tmp_path / 'nope'}", "--out-dir", str(tmp_path)])


def test_keyframe_run_merges_the_keyframe_accuracy_where_every_segment_has_a_keyframe(tiny_world):
    """--decode-mode keyframe on clips with a keyframe every 0.25 s (1 s clips): its top-1 is the
    keyframe decoder's, merged as accuracy_by_decode.keyframe at 2 and 4 frames (segments of
    0.5 and 0.25 s) but not at 8 (0.125 s), leaving the exact accuracy alone."""
    root, (a, _), profile, configs = tiny_world
    data = root / "gop4"
    generate(str(data), 18, seed=3, size=64, frames=16, workers=1, classes=CLASSES[:3],
             progress=False, gop=4)
    before = {c.key: c.accuracy for c in ProfileTable.load(profile).configs}
    out = root / "results-keyframe"
    payload = pareto.main(["--checkpoint", f"first={a}", "--data", str(data / "manifest.csv"),
                           "--profile", str(profile), "--out-dir", str(out), "--batch-size", "4",
                           "--decode-mode", "keyframe"])
    assert payload["decode_mode"] == "keyframe" and (out / "pareto_keyframe.json").exists()
    from model import load_checkpoint
    from video import load_clip
    net = load_checkpoint(a).eval()
    samples, classes = load_samples(data / "manifest.csv", "test")
    with torch.no_grad():
        hits = [net(load_clip(s.path, 4, 32, decode_mode="keyframe")[None], patch=16).argmax().item()
                == classes.index(s.label) for s in samples]
    row = next(r for r in payload["rows"] if (r["frames"], r["pixels"], r["patch"]) == (4, 32, 16))
    assert row["top1"] == pytest.approx(sum(hits) / len(hits))
    merged = ProfileTable.load(profile)
    by_key = {c.key: c for c in merged.configs}
    assert {k for k, c in by_key.items() if c.accuracy_for("keyframe") is not None} == \
        {k for k in configs if k[0] <= 4}
    assert by_key[(4, 32, 16)].accuracy_for("keyframe") == pytest.approx(row["top1"])
    assert {k: c.accuracy for k, c in by_key.items()} == before
    assert "keyframe" in json.loads(profile.read_text())["meta"]["accuracy_by_decode"]
