"""Checkpoint averaging (training/average.py): the mean of every float tensor, refusals with a reason."""
import json

import pytest
import torch

from model import VideoMambaConfig, load_checkpoint, save_checkpoint
from model.network import VideoMamba
from training import average as average_mod

LABELS = ["a", "b", "c"]


def _saved(tmp_path, name, seed, labels=LABELS, **overrides):
    torch.manual_seed(seed)
    fields = {"embed_dim": 32, "depth": 2, "img_size": 32, "num_frames": 2, **overrides}
    cfg = VideoMambaConfig(num_classes=len(labels), **fields)
    return save_checkpoint(VideoMamba(cfg), tmp_path / name, labels=labels)


def test_average_is_the_elementwise_mean_and_predicts(tmp_path):
    paths = [_saved(tmp_path, f"c{i}", seed=i) for i in range(3)]
    states = [load_checkpoint(p).state_dict() for p in paths]
    average_mod.main([*map(str, paths), "--out", str(tmp_path / "avg")])
    net = load_checkpoint(tmp_path / "avg")
    assert net.labels == LABELS
    for key, value in net.state_dict().items():
        expected = (states[0][key].double() + states[1][key].double() + states[2][key].double()) / 3
        torch.testing.assert_close(value, expected.to(value.dtype), rtol=0, atol=1e-6, msg=key)
    assert not torch.equal(net.state_dict()["head.weight"], states[0]["head.weight"])
    extra = json.loads((tmp_path / "avg" / "config.json").read_text())["extra"]
    assert extra["averaged_from"] == [str(p) for p in paths]
    assert net(torch.randn(1, 3, 2, 32, 32)).shape == (1, 3)


def test_average_of_one_checkpoint_is_that_checkpoint(tmp_path):
    path = _saved(tmp_path, "only", seed=4)
    net = average_mod.average_checkpoints([path])
    for key, value in load_checkpoint(path).state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def test_refuses_different_networks_or_labels(tmp_path):
    base = _saved(tmp_path, "base", seed=0)
    deeper = _saved(tmp_path, "deeper", seed=1, depth=3)
    relabelled = _saved(tmp_path, "relabelled", seed=2, labels=["a", "b", "z"])
    with pytest.raises(ValueError, match="configuration differs .* \\['depth'\\]"):
        average_mod.average_checkpoints([base, deeper])
    with pytest.raises(ValueError, match="labels differ"):
        average_mod.average_checkpoints([base, relabelled])
    with pytest.raises(ValueError, match="at least one"):
        average_mod.average_checkpoints([])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        average_mod.main([str(base), str(tmp_path / "missing"), "--out", str(tmp_path / "avg")])
    assert not (tmp_path / "avg").exists()  # a refusal writes nothing
