"""Checkpoint selection (training/select.py): pooled held-out clips, ranking, refusing the test split."""
import csv
import json

import pytest
import torch

from model import VideoMambaConfig, save_checkpoint
from model.network import VideoMamba
from training import select as select_mod
from training.data import load_samples
from training.evaluate import top1

from test_training import write_clip

LABELS = ["left", "right"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A manifest (3 left + 1 right in val, 1 of each in test) and a path,label CSV of 2 left clips."""
    root = tmp_path_factory.mktemp("select")
    rows = [(f"v{i}.mp4", "left" if i < 3 else "right", "val") for i in range(4)]
    rows += [("t0.mp4", "left", "test"), ("t1.mp4", "right", "test")]
    for i, (name, label, _) in enumerate(rows):
        write_clip(root / name, -1 if label == "left" else 1, seed=i)
    (root / "classes.json").write_text(json.dumps(LABELS))
    with open(root / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    (root / "more").mkdir()
    for i in range(2):
        write_clip(root / "more" / f"m{i}.mp4", -1, seed=10 + i)
    with open(root / "more" / "plain.csv", "w", newline="") as f:
        csv.writer(f).writerows([(f"m{i}.mp4", "left") for i in range(2)])
    return root


def _checkpoint(tmp_path, name, bias):
    """A tiny network whose head answers by its bias alone: always one class."""
    torch.manual_seed(0)
    net = VideoMamba(VideoMambaConfig(num_classes=2, embed_dim=32, depth=2, img_size=32, num_frames=4))
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor(bias))
    return save_checkpoint(net, tmp_path / name, labels=LABELS)


def test_ranks_by_the_pooled_held_out_clips(data, tmp_path, capsys):
    always_left = _checkpoint(tmp_path, "left", [5.0, -5.0])
    always_right = _checkpoint(tmp_path, "right", [-5.0, 5.0])
    results = select_mod.main([str(always_right), str(always_left), "--data", f"{data / 'manifest.csv'}:val",
                               "--data", str(data / "more" / "plain.csv"), "--rank", "2x32,4x64", "--show", "4x48/12"])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["clips"] == 6 and report["best"] == str(always_left)
    left, right = (next(r for r in results if r["checkpoint"] == str(p)) for p in (always_left, always_right))
    assert left["top1"] == pytest.approx({"2x32": 5 / 6, "4x64": 5 / 6, "4x48/12": 5 / 6})
    assert right["rank_mean"] == pytest.approx(1 / 6)


def test_scores_match_evaluate_top1(data, tmp_path):
    torch.manual_seed(3)
    net = VideoMamba(VideoMambaConfig(num_classes=2, embed_dim=32, depth=2, img_size=32, num_frames=4))
    path = save_checkpoint(net, tmp_path / "random", labels=LABELS)
    samples, classes = select_mod.load_pooled([f"{data / 'manifest.csv'}:val"])
    (result,) = select_mod.score([path], samples, classes, ["4x64"])
    # 4x64 without a patch keeps the native 2 x 2 token grid: patch 32
    assert result["top1"]["4x64"] == pytest.approx(top1(net.eval(), samples, classes, 4, 64, 32))


def test_refuses_the_test_split_and_mismatched_classes(data, tmp_path):
    with pytest.raises(ValueError, match="test split"):
        select_mod.load_pooled([f"{data / 'manifest.csv'}:test"])
    other = tmp_path / "other.csv"
    other.write_text(f"{data / 'v0.mp4'},up\n")
    with pytest.raises(ValueError, match="labels not among"):
        select_mod.load_pooled([str(data / "manifest.csv"), str(other)])
    with pytest.raises(ValueError, match="bad view"):
        select_mod.parse_view("4by112")
    assert load_samples(data / "manifest.csv", "val")[0]  # the fixture itself is sound
