"""The synthetic benchmark generator: determinism, manifest, real H.264 files, CLI errors."""
import csv
import json
import os
import subprocess
import sys
from collections import Counter

import av
import numpy as np
import pytest

from video import synthetic as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUBSET = ("move_e", "rotate_cw", "rotate_ccw", "grow", "seq_move_spin_grow", "seq_grow_spin_move")
SMALL = ["--size", "64", "--frames", "16", "--classes", ",".join(SUBSET)]


def _run(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "video.synthetic", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _manifest(out):
    with open(os.path.join(out, "manifest.csv"), newline="") as f:
        return list(csv.reader(f))


def _decode(path):
    with av.open(path) as container:
        stream = container.streams.video[0]
        codec, pix_fmt = stream.codec_context.name, stream.codec_context.pix_fmt
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    return codec, pix_fmt, np.stack(frames)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two runs with the same seed (different worker counts) and one with another seed."""
    runs = {}
    for name, seed, workers in (("a", 3, 2), ("b", 3, 1), ("c", 4, 2)):
        out = str(tmp_path_factory.mktemp(name))
        res = _run("--out", out, "--clips", "12", "--seed", str(seed), "--workers", str(workers), *SMALL)
        assert res.returncode == 0, res.stderr
        runs[name] = out
    return runs


def test_same_seed_same_manifest_and_frames(dataset):
    a, b = dataset["a"], dataset["b"]
    with open(os.path.join(a, "manifest.csv"), "rb") as fa, open(os.path.join(b, "manifest.csv"), "rb") as fb:
        assert fa.read() == fb.read()
    for path, _, _ in _manifest(a)[1:]:
        _, _, fa = _decode(os.path.join(a, path))
        _, _, fb = _decode(os.path.join(b, path))
        assert np.array_equal(fa, fb), path


def test_different_seed_differs(dataset):
    a, c = dataset["a"], dataset["c"]
    assert _manifest(a) != _manifest(c)
    path = _manifest(a)[1][0]
    assert not np.array_equal(_decode(os.path.join(a, path))[2][0], _decode(os.path.join(c, path))[2][0])


def test_manifest_and_classes(dataset):
    out = dataset["a"]
    rows = _manifest(out)
    assert rows[0] == ["path", "label", "split"]
    rows = rows[1:]
    assert len(rows) == 12
    with open(os.path.join(out, "classes.json")) as f:
        classes = json.load(f)
    assert classes == list(SUBSET)  # canonical order, the subset asked for
    assert Counter(label for _, label, _ in rows) == {c: 2 for c in SUBSET}  # every class, balanced
    assert {split for _, _, split in rows} <= {"train", "val", "test"}
    assert len({path for path, _, _ in rows}) == 12
    for path, _, _ in rows:
        assert not os.path.isabs(path) and os.path.isfile(os.path.join(out, path))


def test_splits_are_stratified():
    plan = S.make_plan(2000, 0)
    assert len(plan) == 2000
    per_class = Counter(label for _, label, _ in plan)
    assert set(per_class) == set(S.CLASSES) and max(per_class.values()) - min(per_class.values()) <= 1
    for c in S.CLASSES:
        splits = Counter(split for _, label, split in plan if label == c)
        n = per_class[c]
        assert abs(splits["train"] - 0.70 * n) <= 1 and abs(splits["val"] - 0.15 * n) <= 1
        assert abs(splits["test"] - 0.15 * n) <= 1
    totals = Counter(split for _, _, split in plan)
    assert abs(totals["train"] - 1400) <= 30 and abs(totals["val"] - 300) <= 30
    assert S.make_plan(2000, 0) == plan and S.make_plan(2000, 1) != plan


def test_files_are_h264_with_requested_shape(dataset):
    out = dataset["a"]
    for path, _, _ in _manifest(out)[1:]:
        full = os.path.join(out, path)
        assert path.endswith(".mp4") and open(full, "rb").read(12)[4:8] == b"ftyp"
        codec, pix_fmt, frames = _decode(full)
        assert codec == "h264" and pix_fmt == "yuv420p"
        assert frames.shape == (16, 64, 64, 3)


def test_decoded_close_to_rendered(tmp_path):
    clip = S.render_clip("orbit_cw", S.clip_rng(0, 0), 64, 16)
    path = str(tmp_path / "x.mp4")
    S.encode_mp4(clip, path)
    _, _, frames = _decode(path)
    assert frames.shape == clip.shape
    assert np.abs(frames.astype(int) - clip).mean() < 8  # lossy, but the same pictures


def test_gop_sets_the_keyframe_spacing(tmp_path):
    clip = S.render_clip("orbit_cw", S.clip_rng(0, 0), 64, 32)
    for gop, keyframes in ((None, [0]), (8, [0, 8, 16, 24])):
        path = str(tmp_path / f"g{gop}.mp4")
        S.encode_mp4(clip, path, gop=gop)
        with av.open(path) as container:
            stream = container.streams.video[0]
            found = [round(float((p.pts - (stream.start_time or 0)) * stream.time_base) * 16)
                     for p in container.demux(stream) if p.is_keyframe]
        assert found == keyframes


@pytest.mark.parametrize("name", S.CLASSES)
def test_render_clip_pure(name):
    clip = S.render_clip(name, np.random.default_rng(5), 48, 6)
    assert clip.shape == (6, 48, 48, 3) and clip.dtype == np.uint8
    assert np.array_equal(clip, S.render_clip(name, np.random.default_rng(5), 48, 6))


@pytest.mark.parametrize("name", ["orbit_cw", "seq_move_spin_grow", "grow", "move_nw"])
def test_rendering_chosen_instants_draws_those_frames_of_the_whole_clip(name):
    """Training renders only the frames it samples: they must be the encoded clip's frames (same
    path, start and shift back into the frame), up to the per-pixel noise (clutter 0 mutes it)."""
    whole = S.render_clip(name, np.random.default_rng(2), 64, 64, clutter=0)
    picked = [3, 20, 41, 63]
    some = S.render_clip(name, np.random.default_rng(2), 64, clutter=0, times=np.array(picked) / 63)
    assert some.shape == (4, 64, 64, 3)
    assert np.array_equal(some, whole[picked])
    with pytest.raises(ValueError, match="fractions"):
        S.render_clip(name, np.random.default_rng(2), 64, times=[0.5, 1.5])


def test_first_frame_does_not_depend_on_class():
    """Same random stream, different classes: the background, distractors and the actor's look
    come first from the stream, so frame 0 differs only where the actor is."""
    a = S.render_clip("move_e", np.random.default_rng(9), 64, 8).astype(int)
    b = S.render_clip("move_w", np.random.default_rng(9), 64, 8).astype(int)
    changed = np.abs(a[0] - b[0]).max(-1) > 40
    assert changed.mean() < 0.06  # only the actor's own pixels (and the noise) differ


def test_classes_and_families():
    assert len(S.CLASSES) == len(set(S.CLASSES)) and 20 <= len(S.CLASSES) <= 40
    assert {S.FAMILY[c] for c in S.CLASSES} == {"short", "long"}
    orders = {frozenset(steps) for steps in S.SEQUENCES.values()}
    assert len(orders) == 1 and len(S.SEQUENCES) == 6  # every order of the same three sub-actions


def test_preview_png(tmp_path):
    assert S.main(["--out", str(tmp_path), "--clips", "6", "--seed", "0", "--preview", *SMALL]) == 0
    data = (tmp_path / "preview.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert height == len(SUBSET) * 66 + 2 and width > 8 * 64
    assert not (tmp_path / "manifest.csv").exists()


@pytest.mark.parametrize("args,message", [
    (["--clips", "3"], "fewer than the 6 classes"),
    (["--clips", "0"], "--clips must be >= 1"),
    (["--clips", "12", "--size", "63"], "--size must be a multiple of 4"),
    (["--clips", "12", "--frames", "2"], "--frames must be >= 4"),
    (["--clips", "12", "--workers", "0"], "--workers must be >= 1"),
    (["--clips", "12", "--seed", "-1"], "--seed must be >= 0"),
    (["--clips", "12", "--classes", "move_e,jump"], "unknown class name(s) in --classes: jump"),
    (["--clips", "12", "--clutter", "-1"], "--clutter must be in 0..3"),
    (["--clips", "12", "--gop", "0"], "--gop must be >= 1"),
])
def test_bad_arguments(tmp_path, capsys, args, message):
    argv = ["--out", str(tmp_path / "o"), "--seed", "0", "--classes", ",".join(SUBSET), *args]
    if "--seed" in args:
        argv = argv[:2] + argv[4:]
    with pytest.raises(SystemExit) as exit_:
        S.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err, err
    assert not os.path.exists(tmp_path / "o")


def test_missing_required_argument():
    res = _run("--clips", "5", "--seed", "0")  # through the real entry point
    assert res.returncode == 2 and "--out" in res.stderr


def test_actor_pose_follows_the_class():
    """The actor's pose over a whole clip (what render_clip draws and benchmarks/oracle.py reads)."""
    t = S.FULL_CLIP

    def pose(name, seed=1):
        return S.actor_pose(name, np.random.default_rng(seed), t, 128)

    east, north = pose("move_e"), pose("move_n")
    assert east["x"][-1] - east["x"][0] > 50 and abs(east["y"][-1] - east["y"][0]) < 20
    assert north["y"][0] - north["y"][-1] > 50  # screen y points down
    assert np.diff(pose("rotate_cw")["ang"]).min() >= 0 and np.diff(pose("rotate_ccw")["ang"]).max() <= 0
    assert pose("grow")["length"][-1] / pose("grow")["length"][0] > 1.5
    still = pose("still")
    assert np.ptp(still["x"]) == np.ptp(still["ang"]) == np.ptp(still["length"]) == 0
    for name in S.CLASSES:  # the actor's centre stays in the frame (a grown actor may reach out)
        for seed in range(5):
            p = pose(name, seed)
            assert 0 < p["x"].min() and p["x"].max() < 128 and 0 < p["y"].min() and p["y"].max() < 128
