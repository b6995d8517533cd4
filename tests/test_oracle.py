"""benchmarks/oracle.py: the state oracle reads the class from the actor's poses."""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import oracle  # noqa: E402


def test_shown_frames_are_those_evaluation_decodes():
    assert oracle.shown_frames(4).tolist() == [8, 24, 40, 56]
    assert oracle.shown_frames(64).tolist() == list(range(64))
    assert oracle.shown_frames(8).tolist() == [4, 12, 20, 28, 36, 44, 52, 60]


def test_oracle_learns_the_classes_from_poses():
    x, y = oracle.poses(3000, seed=0)
    assert x.shape == (3000, 64, 5) and np.isfinite(x).all()
    assert np.array_equal(x, oracle.poses(3000, seed=0)[0])  # deterministic
    xt, yt = oracle.poses(1050, seed=0, start=3000)
    shown = oracle.shown_frames(8)
    flat = [torch.from_numpy(a[:, shown].reshape(len(a), -1)) for a in (x, xt)]
    top1, pred = oracle.fit_and_score(flat[0], torch.from_numpy(y), flat[1], torch.from_numpy(yt), epochs=8, seed=0)
    assert pred.shape == (1050,)
    assert top1 > 0.6  # chance is 1/21; a few seconds of training on exact poses


def test_observe_adds_errors_of_the_stated_size():
    x, _ = oracle.poses(400, seed=1)
    assert oracle.observe(x, 0, seed=0) is x
    seen = oracle.observe(x, 2.0, seed=0)
    assert np.allclose(seen[..., 2] ** 2 + seen[..., 3] ** 2, 1, atol=1e-5)  # still an angle
    px = (seen[..., :2] - x[..., :2]) * 128
    assert 1.8 < px.std() < 2.2  # 2 px at 128 px
    turn = np.rad2deg(np.arctan2(seen[..., 3], seen[..., 2]) - np.arctan2(x[..., 3], x[..., 2]))
    assert 9 < np.std((turn + 180) % 360 - 180) < 11  # 10 degrees
