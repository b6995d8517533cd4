"""Training and evaluation end to end on tiny real videos: dataset layouts, a step of every flex
variant, resume, a 2-process DDP run (gloo), and the evaluate CLI."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from training import train as train_mod
from training.data import RenderedClips, load_samples
from training.variants import VARIANTS, Config, ConfigSampler, parse_configs
from model import VideoMambaConfig

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--set", "embed_dim=32", "--set", "depth=2", "--set", "img_size=32", "--set", "num_frames=4"]


def write_clip(path: Path, direction: int, seed: int, frames=16, size=(40, 48)):
    """A bright square moving left (direction -1) or right (+1) over noise: H.264 mp4."""
    rng = np.random.default_rng(seed)
    h, w = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
            x = int((t / (frames - 1)) * (w - 10)) if direction > 0 else int((1 - t / (frames - 1)) * (w - 10))
            img[h // 2 - 5:h // 2 + 5, x:x + 10] = 250
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The same 12 clips in all three layouts: manifest (with splits), class folders, path,label CSV."""
    root = tmp_path_factory.mktemp("clips")
    rows = []
    for label, direction in (("left", -1), ("right", 1)):
        (root / "tree" / label).mkdir(parents=True)
        for i in range(6):
            path = root / "tree" / label / f"{label}_{i}.mp4"
            write_clip(path, direction, seed=i * 2 + (direction > 0))
            rows.append((f"tree/{label}/{path.name}", label, "train" if i < 4 else ("val" if i == 4 else "test")))
    with open(root / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "split"), *rows])
    with open(root / "plain.csv", "w", newline="") as f:
        csv.writer(f).writerows([(p, label) for p, label, _ in rows])
    return root


def test_dataset_layouts(dataset):
    manifest, classes = load_samples(dataset / "manifest.csv")
    tree, tree_classes = load_samples(dataset / "tree")
    plain, plain_classes = load_samples(dataset / "plain.csv")
    assert classes == tree_classes == plain_classes == ["left", "right"]
    assert sorted((s.path, s.label) for s in manifest) == sorted((s.path, s.label) for s in tree) \
        == sorted((s.path, s.label) for s in plain)
    assert len(load_samples(dataset / "manifest.csv", "train")[0]) == 8
    with pytest.raises(ValueError, match="no split column"):
        load_samples(dataset / "plain.csv", "train")
    with pytest.raises(FileNotFoundError):
        load_samples(dataset / "missing.csv")


def test_variant_configurations():
    cfg = VideoMambaConfig(embed_dim=32, depth=2, img_size=112, num_frames=8)
    for variant in VARIANTS:
        sampler = ConfigSampler(variant, cfg, seed=1)
        configs = {sampler.sample() for _ in range(200)}
        if variant == "none":
            assert configs == {sampler.native()}
        if variant == "temporal":
            assert {c.pixels for c in configs} == {112} and {c.frames for c in configs} == {4, 8, 16, 32}
        if variant == "static_tokens":  # the token grid stays (about) the native 7x7
            assert all(7 <= c.pixels // c.patch <= 8 for c in configs) and len({c.pixels for c in configs}) == 4
        if variant == "static_patch":
            assert {c.patch for c in configs} == {16}
        if variant == "flexivit":
            assert {c.pixels for c in configs} == {120} and all(120 % c.patch == 0 for c in configs)
        if variant == "flex_all":
            assert all(c.pixels % c.patch == 0 for c in configs) and len({c.patch for c in configs}) > 2


def test_also_mixes_extra_configurations_in():
    cfg = VideoMambaConfig(embed_dim=32, depth=2, img_size=112, num_frames=8)
    also = parse_configs("8x56/28, 4x56/16")
    assert also == [Config(8, 56, 28), Config(4, 56, 16)]
    sampler = ConfigSampler("static_tokens", cfg, seed=3, also=also, also_fraction=0.25)
    draws = [sampler.sample() for _ in range(4000)]
    extra = sum(c in also for c in draws) / len(draws)
    assert 0.22 < extra < 0.28 and {c for c in draws if c in also} == set(also)
    assert all(7 <= c.pixels // c.patch <= 8 for c in draws if c not in also)  # the rest: static tokens
    again = ConfigSampler("static_tokens", cfg, seed=3, also=also, also_fraction=0.25)
    assert [again.sample() for _ in range(4000)] == draws  # seeded
    for bad in ("8x56", "8x56/x", "56/28"):
        with pytest.raises(ValueError, match="FRAMESxPIXELS/PATCH"):
            parse_configs(bad)
    with pytest.raises(ValueError, match="patch <= pixels"):
        ConfigSampler("none", cfg, also=[Config(8, 56, 64)], also_fraction=0.5)
    with pytest.raises(ValueError, match="needs configurations"):
        ConfigSampler("none", cfg, also_fraction=0.5)
    with pytest.raises(SystemExit):
        train_mod.parse_args(["--data", "x", "--out", "y", "--also", "8x56/28"])  # no fraction


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_training_step_of_every_variant(dataset, tmp_path, variant):
    history = train_mod.main(["--flex", variant, "--data", str(dataset / "manifest.csv"), "--out", str(tmp_path),
                              "--epochs", "1", "--batch-size", "4", "--max-steps-per-epoch", "1", "--workers", "0",
                              "--sizes", "24,32,48", "--frames", "2,4", *TINY])
    assert len(history) == 1 and np.isfinite(history[0]["loss"]) and "val_top1_native" in history[0]
    assert {p.name for p in tmp_path.iterdir()} >= {"model.safetensors", "config.json", "labels.json", "train_state.pt"}


def test_rendered_clips_are_fresh_balanced_and_preprocessed():
    from video import synthetic
    classes = list(synthetic.CLASSES[:3])
    data = RenderedClips(classes, clips_per_epoch=6, seed=1)
    clip, label = data[(4, 4, 32, 0)]
    assert clip.shape == (3, 4, 32, 32) and clip.dtype == torch.float32 and int(label) == 1
    assert [int(data[(i, 2, 16, 0)][1]) for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert torch.equal(clip, data[(4, 4, 32, 0)][0])  # a pure function of its key
    assert not torch.equal(clip, data[(4, 4, 32, 1)][0])  # a new clip every epoch
    assert abs(float(clip.mean())) < 3  # normalised like decoded clips
    with pytest.raises(ValueError, match="synthetic benchmark"):
        RenderedClips(["walking"], clips_per_epoch=4)
    with pytest.raises(ValueError, match="clutter"):
        RenderedClips(classes, clips_per_epoch=4, clutter=-1)


def test_rendered_clips_clutter_scales_only_the_clutter():
    from video import synthetic
    classes = list(synthetic.CLASSES[:2])
    plain = RenderedClips(classes, clips_per_epoch=2, seed=3, clutter=0.0)[(0, 4, 64, 0)][0]
    busy = RenderedClips(classes, clips_per_epoch=2, seed=3)[(0, 4, 64, 0)][0]
    # the same draws; without clutter the background is flat and still, so the clip varies less
    assert not torch.equal(plain, busy)
    assert plain.std(dim=(1, 2, 3)).mean() < busy.std(dim=(1, 2, 3)).mean()


def test_training_on_rendered_clips(dataset, tmp_path):
    from video import synthetic
    manifest = tmp_path / "manifest.csv"  # the synthetic classes, val split from real files
    rows = (dataset / "manifest.csv").read_text().splitlines()
    names = {}
    with manifest.open("w") as f:
        f.write(rows[0] + "\n")
        for row in rows[1:]:
            path, label, split = row.split(",")
            names.setdefault(label, synthetic.CLASSES[len(names)])
            f.write(f"{dataset / path},{names[label]},{split}\n")
    history = train_mod.main(["--flex", "static_tokens", "--data", str(manifest), "--out", str(tmp_path / "ckpt"),
                              "--render", "8", "--epochs", "1", "--batch-size", "4", "--workers", "0",
                              "--sizes", "24,32", "--frames", "2,4", *TINY])
    assert len(history) == 1 and np.isfinite(history[0]["loss"]) and "val_top1_native" in history[0]


def test_resume_continues(dataset, tmp_path):
    common = ["--flex", "static_tokens", "--data", str(dataset / "manifest.csv"), "--out", str(tmp_path),
              "--batch-size", "4", "--workers", "0", "--sizes", "24,32", "--frames", "2,4", *TINY]
    first = train_mod.main(common + ["--epochs", "1"])
    resumed = train_mod.main(common + ["--epochs", "2", "--resume"])
    assert len(first) == 1 and len(resumed) == 2 and resumed[0] == first[0]
    config = json.loads((tmp_path / "config.json").read_text())
    assert len(config["extra"]["history"]) == 2


def test_init_keeps_the_head_only_for_the_same_classes(dataset, tmp_path):
    from model import build_model, save_checkpoint
    manifest = str(dataset / "manifest.csv")
    classes = load_samples(manifest)[1]
    tiny = dict(embed_dim=32, depth=2, img_size=32, num_frames=4)
    for name, labels in (("same", classes), ("renamed", ["up", "down"]), ("more", ["a", "b", "c"])):
        source = build_model("nano", num_classes=len(labels), **tiny)
        with torch.no_grad():
            source.head.weight.fill_(1.0)
        save_checkpoint(source, tmp_path / name, labels=labels)
        args = train_mod.parse_args(["--data", manifest, "--out", str(tmp_path / "out"), "--init", str(tmp_path / name)])
        net, state = train_mod.initial_model(args, classes)
        assert state is None and net.labels == classes and net.head.weight.shape == (2, 32)
        kept = bool((net.head.weight == 1.0).all())
        assert kept == (name == "same"), name
        if not kept:  # VideoMamba's fresh head, not the file's
            assert float(net.head.weight.detach().std()) < 0.05 and not net.head.bias.any()


def test_stop_after_then_resume_equals_one_run(dataset, tmp_path):
    from safetensors.torch import load_file
    common = ["--flex", "static_tokens", "--data", str(dataset / "manifest.csv"), "--batch-size", "4",
              "--workers", "0", "--sizes", "24,32", "--frames", "2,4", "--epochs", "2", *TINY]
    whole, paused = tmp_path / "whole", tmp_path / "paused"
    train_mod.main(common + ["--out", str(whole)])
    assert len(train_mod.main(common + ["--out", str(paused), "--stop-after", "1"])) == 1
    train_mod.main(common + ["--out", str(paused), "--resume"])
    a, b = load_file(whole / "model.safetensors"), load_file(paused / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit):
        train_mod.parse_args(common + ["--out", str(paused), "--stop-after", "0"])


def test_ddp_two_processes_gloo(dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "training.train", "--flex", "static_tokens", "--data", str(dataset / "manifest.csv"),
           "--out", str(tmp_path), "--epochs", "1", "--batch-size", "2", "--workers", "0",
           "--sizes", "24,32", "--frames", "2,4", "--device", "cpu", *TINY]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr
    history = json.loads((tmp_path / "config.json").read_text())["extra"]["history"]
    assert len(history) == 1


def test_evaluate_cli(dataset, tmp_path):
    train_mod.main(["--flex", "none", "--data", str(dataset / "manifest.csv"), "--out", str(tmp_path),
                    "--epochs", "1", "--batch-size", "4", "--workers", "0", *TINY])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "training.evaluate", "--checkpoint", str(tmp_path), "--data",
         str(dataset / "manifest.csv"), *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    single = run("--frames", "4", "--pixels", "48", "--patch", "12")
    assert single.returncode == 0, single.stderr
    result = json.loads(single.stdout)
    assert result["frames"] == 4 and result["pixels"] == 48 and result["patch"] == 12 and 0 <= result["top1"] <= 1
    grid = json.loads(run("--grid-frames", "2,4", "--grid-pixels", "32,64").stdout)
    assert [(r["frames"], r["pixels"], r["patch"]) for r in grid["results"]] == [(2, 32, 16), (2, 64, 32), (4, 32, 16), (4, 64, 32)]
    retrieval = json.loads(run("--retrieval").stdout)
    assert 0 <= retrieval["retrieval_top1"] <= 1
    probe = json.loads(run("--linear-probe", "--train-clips", "6").stdout)
    assert 0 <= probe["linear_probe_top1"] <= 1 and probe["train_clips"] == 6
    assert torch.load(tmp_path / "train_state.pt", weights_only=True)["epoch"] == 0


def test_linear_probe_separates_what_is_separable_and_nothing_else(fresh_seed):
    """Gaussian blobs, 3 classes in 16 dimensions with different scales per dimension: the probe
    fitted on 300 points classifies 300 fresh ones (>= 95%); with labels that carry no
    information it is near chance on fresh points (a probe that saw the test points, or ignored the features, would
    not be)."""
    from training.evaluate import fit_linear_probe

    g = torch.Generator().manual_seed(fresh_seed)
    means = torch.randn(3, 16, generator=g, dtype=torch.float64) * 3
    scales = torch.logspace(-2, 2, 16, dtype=torch.float64)  # standardisation matters

    def draw(n):
        y = torch.arange(n) % 3
        return (means[y] + torch.randn(n, 16, generator=g, dtype=torch.float64)) * scales, y

    x, y = draw(300)
    x_new, y_new = draw(300)
    predict = fit_linear_probe(x, y, 3)
    assert (predict(x_new) == y_new).double().mean() >= 0.95
    # labels that say nothing of the blob: each blob holds every label a third of the time (a
    # shuffle could leave a blob with a majority label by chance: 0.58 on 2 seeds of 60)
    null = fit_linear_probe(x, (y + torch.arange(300) // 3) % 3, 3)
    assert (null(x_new) == y_new).double().mean() <= 0.5  # at most 0.47 over 100 seeds


def test_the_bundled_checkpoints_recipe_is_a_chain_of_valid_commands():
    """training/recipes/bundled_nano.sh, printed (DRY_RUN=1): every training command parses,
    the base and eleven stages of a StretchySnake/vanilla pair each start from the stage before,
    and the last ones write what checkpoints/ holds."""
    import shlex

    script = ROOT / "training" / "recipes" / "bundled_nano.sh"
    printed = subprocess.run(["bash", str(script)], env={**os.environ, "DRY_RUN": "1"},
                             capture_output=True, text=True, check=True, timeout=60).stdout
    runs = [train_mod.parse_args(shlex.split(line)[3:]) for line in printed.splitlines()
            if line.startswith("python -m training.train")]
    assert len(runs) == 1 + 2 * 11 and runs[0].out == "runs/base_v2" and runs[0].init is None
    done = {"runs/base_v2"}
    for r in runs[1:]:
        assert r.init in done, (r.out, r.init)  # each stage starts from one already made
        done.add(r.out)
    assert {"runs/ss_ft11", "runs/van_ft11"} <= done
    ss = [r for r in runs[1:] if r.out.startswith("runs/ss_")]
    assert all(r.flex == "static_tokens" for r in ss) and len(ss) == 11


def test_frame_cache_matches_sparse_decoding(dataset):
    samples, classes = load_samples(dataset / "manifest.csv", "test")
    from training.data import ClipDataset
    direct, cached = ClipDataset(samples, classes), ClipDataset(samples, classes, cache=True)
    for key in [(0, 4, 32), (1, 16, 48), (0, 20, 40)]:  # 20 > the clip's 16 frames: repeats
        a, b = direct[key][0], cached[key][0]
        assert a.shape == b.shape == (3, key[1], key[2], key[2])
        # the same frames; resizing differs (swscale area at decode vs torch antialias)
        assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.97


def test_cached_training_with_a_worker_over_epochs(dataset, tmp_path):
    history = train_mod.main(["--flex", "static_tokens", "--data", str(dataset / "manifest.csv"), "--out",
                              str(tmp_path), "--epochs", "2", "--batch-size", "4", "--workers", "1", "--cache",
                              "--sizes", "24,32", "--frames", "2,4", *TINY])
    assert len(history) == 2 and all(np.isfinite(h["loss"]) for h in history)
