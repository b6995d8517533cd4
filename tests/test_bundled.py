"""What the server runs by default: the bundled checkpoints and the committed profile tables load,
belong together, and hold what the selector needs (a table that drifts from its checkpoint, or a
decode model the server cannot read, fails here rather than at a user's first request)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model import count_flops, load_checkpoint
from serving import tables
from serving.decode_cost import DecodeModel
from serving.selector import ProfileTable, decode_value, native_key

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = {name: REPO / "checkpoints" / name for name in ("stretchysnake_nano", "vanilla_nano")}
PROFILES = sorted((REPO / "profiles").glob("*.json"))


@pytest.fixture(scope="module")
def served():
    return load_checkpoint(CHECKPOINTS["stretchysnake_nano"]).eval()


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_bundled_checkpoints_load_with_their_classes_and_run(name):
    net = load_checkpoint(CHECKPOINTS[name]).eval()
    labels = json.loads((CHECKPOINTS[name] / "labels.json").read_text())
    assert net.labels == labels and len(labels) == net.config.num_classes == 21
    with torch.no_grad():
        probs = net(torch.randn(1, 3, 8, 112, 112), patch=16).softmax(-1)
    assert probs.shape == (1, 21) and torch.isfinite(probs).all()


@pytest.mark.parametrize("path", PROFILES, ids=[p.name for p in PROFILES])
def test_committed_profiles_are_the_served_checkpoints_and_complete(path, served):
    table = ProfileTable.load(path)
    assert tables.differences(table, served) == []     # measured on this architecture
    reconciled, notes = tables.reconcile(table, served)
    assert len(reconciled.configs) == len(table.configs) and notes == []
    assert native_key(table) == (8, 112, 16)
    for c in table.configs:
        assert c.gflops == pytest.approx(count_flops(served.config, *c.key), rel=1e-6)
        assert c.accuracy is not None and 0 <= c.accuracy <= 1
        # keyframe accuracy where every 0.5 s GOP segment holds a keyframe (4 s clips: <= 8)
        keyframe = decode_value(c, table, "keyframe")
        assert (keyframe is not None) == (c.frames <= 8), c.key
        if keyframe is not None:
            assert abs(keyframe - c.accuracy) <= 0.02, c.key  # issue 30: within 2 points
    model = DecodeModel.from_dict(table.decode_model)
    assert model.fit["samples"] >= 50 and model.per_mpx_ms["h264"] >= 0
