"""benchmarks/profile_check.py: it re-times the network the table was measured on."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.profile_check import model_to_time  # noqa: E402
from model import build_model, save_checkpoint  # noqa: E402


def _tiny(seed):
    torch.manual_seed(seed)
    return build_model("nano", num_classes=3, depth=1, embed_dim=32, img_size=32, num_frames=2)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_model_to_time_prefers_given_then_recorded_checkpoint_then_meta_model(tmp_path):
    recorded, given = _tiny(0), _tiny(1)
    save_checkpoint(recorded, tmp_path / "recorded")
    save_checkpoint(given, tmp_path / "given")
    meta = {"checkpoint": str(tmp_path / "recorded"), "model": recorded.config.to_dict()}

    net, source = model_to_time(meta, tmp_path / "given")
    assert _same_weights(net, given) and source == str(tmp_path / "given")

    net, source = model_to_time(meta)
    assert _same_weights(net, recorded) and not _same_weights(net, given)
    assert source == str(tmp_path / "recorded")

    meta["checkpoint"] = str(tmp_path / "gone")  # moved away: same architecture, fresh weights
    net, source = model_to_time(meta)
    assert "meta.model" in source and net.config.to_dict() == recorded.config.to_dict()

    with pytest.raises(SystemExit, match="pass --checkpoint"):
        model_to_time({"checkpoint": str(tmp_path / "gone")})
