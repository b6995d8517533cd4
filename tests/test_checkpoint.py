"""Checkpoint I/O: our directory format round-trips, public VideoMamba files load exactly (checked
against an independent float64 implementation of the public forward written here), and every
kind of bad checkpoint fails with one clear CheckpointError."""
from __future__ import annotations

import argparse
import math
import os

import pytest
import torch
import torch.nn.functional as F

from model import VideoMamba, VideoMambaConfig
from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

C, DEPTH, GRID, FRAMES, PATCH, CLASSES = 32, 2, 3, 4, 16, 5
N_STATE, D_CONV = 16, 4


# ----------------------------------------------------------------------------- public-layout files
def public_shapes(c=C, depth=DEPTH, grid=GRID, frames=FRAMES, patch=PATCH, classes=CLASSES, imagenet=False):
    """Key -> shape of a public VideoMamba checkpoint (docs/design.md section 4), written out by hand."""
    e, r, n, k = 2 * c, math.ceil(c / 16), N_STATE, D_CONV
    shapes = {
        "cls_token": (1, 1, c),
        "pos_embed": (1, 1 + grid * grid, c),
        "patch_embed.proj.weight": (c, 3, patch, patch) if imagenet else (c, 3, 1, patch, patch),
        "patch_embed.proj.bias": (c,),
        "norm_f.weight": (c,),
        "head.weight": (classes, c),
        "head.bias": (classes,),
    }
    if not imagenet:
        shapes["temporal_pos_embedding"] = (1, frames, c)
    for i in range(depth):
        m = f"layers.{i}.mixer."
        shapes[f"layers.{i}.norm.weight"] = (c,)
        shapes[m + "in_proj.weight"] = (2 * e, c)
        shapes[m + "out_proj.weight"] = (c, e)
        for s in ("", "_b"):
            shapes[m + f"conv1d{s}.weight"] = (e, 1, k)
            shapes[m + f"conv1d{s}.bias"] = (e,)
            shapes[m + f"x_proj{s}.weight"] = (r + 2 * n, e)
            shapes[m + f"dt_proj{s}.weight"] = (e, r)
            shapes[m + f"dt_proj{s}.bias"] = (e,)
        shapes[m + "A_log"] = shapes[m + "A_b_log"] = (e, n)
        shapes[m + "D"] = shapes[m + "D_b"] = (e,)
    return shapes


def random_state(shapes, seed=0):
    """Random values at scales that keep every part of the forward visible in the logits."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    state = {}
    for key, shape in shapes.items():
        if key.endswith(("A_log", "A_b_log")):
            value = torch.log(torch.arange(1, shape[1] + 1.0)).repeat(shape[0], 1) + 0.1 * randn(*shape)
        elif key.endswith("dt_proj.bias") or key.endswith("dt_proj_b.bias"):
            dt = torch.exp(torch.rand(shape, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            value = dt + torch.log(-torch.expm1(-dt))  # softplus^-1
        elif key.endswith(("norm.weight", "norm_f.weight", ".D", ".D_b")):
            value = 1 + 0.1 * randn(*shape)
        elif key == "patch_embed.proj.weight":
            value = randn(*shape) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith(".weight") and len(shape) == 2:
            value = randn(*shape) / math.sqrt(shape[1])
        elif key.endswith("conv1d.weight") or key.endswith("conv1d_b.weight"):
            value = 0.5 * randn(*shape)
        else:  # biases, cls token, positional embeddings
            value = 0.3 * randn(*shape)
        state[key] = value
    return state


def video(frames=FRAMES, pixels=GRID * PATCH, batch=2, seed=1):
    return torch.randn(batch, 3, frames, pixels, pixels, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- independent reference
def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def mamba_direction(x, z, w, suffix):
    """One direction of the public mixer on x, z (B, L, E), in scan order; a plain loop scan."""
    length, e = x.shape[1], x.shape[2]
    conv_w, conv_b = w[f"conv1d{suffix}.weight"], w[f"conv1d{suffix}.bias"]
    k = conv_w.shape[-1]
    # causal depthwise conv: out[t] = b + sum_j w[j] * x[t - (k-1) + j], zeros before the start
    padded = F.pad(x, (0, 0, k - 1, 0))
    xc = F.silu(sum(padded[:, j: j + length] * conv_w[:, 0, j] for j in range(k)) + conv_b)  # (B, L, E)
    r = w[f"dt_proj{suffix}.weight"].shape[1]
    n = w["A_log"].shape[1]
    dt, b_mat, c_mat = (xc @ w[f"x_proj{suffix}.weight"].T).split([r, n, n], dim=-1)
    delta = F.softplus(dt @ w[f"dt_proj{suffix}.weight"].T + w[f"dt_proj{suffix}.bias"])
    a = -torch.exp(w["A_log" if suffix == "" else "A_b_log"])
    h = x.new_zeros(x.shape[0], e, n)
    ys = []
    for t in range(length):
        d_t = delta[:, t, :, None]
        h = torch.exp(d_t * a) * h + d_t * b_mat[:, t, None, :] * xc[:, t, :, None]
        ys.append((h * c_mat[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) + xc * w["D" + suffix]
    return y * F.silu(z)


def reference_forward(state, clip):
    """The public VideoMamba forward in float64 from a public-layout state dict: (features, logits)."""
    s = {k: v.double() for k, v in state.items()}
    kernel = s["patch_embed.proj.weight"]
    k, p = kernel.shape[2], kernel.shape[-1]
    x = F.conv3d(clip.double(), kernel, s["patch_embed.proj.bias"], stride=(k, p, p))  # (B, C, T', H', W')
    b, c, t, hh, ww = x.shape
    x = x.permute(0, 2, 3, 4, 1).reshape(b, t, hh * ww, c)  # per frame, patches row-major
    x = x + s["pos_embed"][:, None, 1:, :]  # spatial, same for every frame
    x = x + s["temporal_pos_embedding"][:, :, None, :]  # per frame, patch tokens only
    cls = (s["cls_token"] + s["pos_embed"][:, :1]).expand(b, 1, c)
    residual = torch.cat([cls, x.reshape(b, t * hh * ww, c)], dim=1)
    depth = 1 + max(int(key.split(".")[1]) for key in s if key.startswith("layers."))
    for i in range(depth):
        w = {key[len(f"layers.{i}.mixer."):]: v for key, v in s.items() if key.startswith(f"layers.{i}.mixer.")}
        hidden = rms_norm(residual, s[f"layers.{i}.norm.weight"])
        xz = hidden @ w["in_proj.weight"].T
        xs, zs = xz.chunk(2, dim=-1)
        y_f = mamba_direction(xs, zs, w, "")
        y_b = mamba_direction(xs.flip(1), zs.flip(1), w, "_b").flip(1)
        residual = residual + (y_f + y_b) @ w["out_proj.weight"].T
    feats = rms_norm(residual, s["norm_f.weight"])[:, 0]
    logits = feats @ s["head.weight"].T + s["head.bias"] if "head.weight" in s else None
    return feats, logits


def assert_matches(actual, expected):
    assert actual.dtype == torch.float32
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double(), expected, rtol=1e-4, atol=1e-4 * scale)


# ----------------------------------------------------------------------------- our directory format
def tiny_config(**changes):
    base = dict(embed_dim=C, depth=DEPTH, img_size=64, num_frames=4, num_classes=CLASSES, patch_size=16)
    return VideoMambaConfig(**{**base, **changes})


def trained_like(cfg, seed=0):
    """A network whose every parameter (temporal embedding included) is random, not the init."""
    net = VideoMamba(cfg)
    net.load_state_dict(random_state({k: tuple(v.shape) for k, v in net.state_dict().items()}, seed))
    return net.eval()


def test_roundtrip_gives_identical_logits_and_labels(tmp_path):
    net = trained_like(tiny_config())
    labels = ["walk", "run", "jump", "swim", "ride"]
    out_dir = save_checkpoint(net, tmp_path / "ckpt", labels=labels)
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "labels.json", "model.safetensors"]

    clip = video(frames=4, pixels=64)
    with torch.no_grad():
        want, want_flexed = net(clip), net(clip, patch=8)
    for where in (out_dir, out_dir / "model.safetensors", out_dir / "config.json", str(out_dir)):
        loaded = load_checkpoint(where)
        assert not loaded.training
        assert loaded.config == net.config
        assert loaded.labels == labels
        assert loaded.load_report.format == "directory"
        with torch.no_grad():
            assert torch.equal(loaded(clip), want)
            assert torch.equal(loaded(clip, patch=8), want_flexed)


def test_roundtrip_keeps_every_config_field(tmp_path):
    cfg = tiny_config(pos_embed="joint", tubelet=2, num_frames=4, backward_order="reverse_frames",
                      patch_resize="bicubic", d_state=8, expand=1, dt_rank=3, norm_eps=1e-6)
    net = trained_like(cfg, seed=3)
    save_checkpoint(net, tmp_path / "joint")
    loaded = load_checkpoint(tmp_path / "joint")
    assert loaded.config == cfg
    assert loaded.load_report.temporal_embedding == "none"
    clip = video(frames=4, pixels=64)
    with torch.no_grad():
        assert torch.equal(loaded(clip), net(clip))


def test_default_labels_extra_and_overrides(tmp_path):
    net = trained_like(tiny_config())
    save_checkpoint(net, tmp_path / "c", extra={"epoch": 3, "top1": 0.5})
    loaded = load_checkpoint(tmp_path / "c", backward_order="reverse_within_frame")
    assert loaded.labels == ["0", "1", "2", "3", "4"]
    assert loaded.load_report.extra == {"epoch": 3, "top1": 0.5}
    assert loaded.config.backward_order == "reverse_within_frame"


def test_save_rejects_wrong_number_of_labels(tmp_path):
    with pytest.raises(ValueError, match="3 class names for a head with 5 classes"):
        save_checkpoint(trained_like(tiny_config()), tmp_path / "c", labels=["a", "b", "c"])
    assert not (tmp_path / "c" / "model.safetensors").exists()


def test_directory_new_head_drops_labels(tmp_path):
    net = trained_like(tiny_config())
    save_checkpoint(net, tmp_path / "c", labels=list("abcde"))
    loaded = load_checkpoint(tmp_path / "c", num_classes=3)
    assert loaded.config.num_classes == 3 and loaded.labels is None
    assert loaded.load_report.head == "fresh"
    clip = video(frames=4, pixels=64)
    with torch.no_grad():
        assert torch.equal(loaded.features(clip), net.features(clip))


def test_bad_directories(tmp_path):
    net = trained_like(tiny_config())
    save_checkpoint(net, tmp_path / "c")
    (tmp_path / "c" / "labels.json").write_text('["only", "two"]')
    with pytest.raises(CheckpointError, match="2 class names for a head with 5 classes"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "model.safetensors").write_bytes(os.urandom(64))
    with pytest.raises(CheckpointError, match="could not read .*model.safetensors"):
        load_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_checkpoint(tmp_path / "c")


# ----------------------------------------------------------------------------- public files
LAYOUTS = {
    "flat": lambda sd: sd,
    "model": lambda sd: {"model": sd, "epoch": 30, "args": argparse.Namespace(lr=1e-3)},
    "module": lambda sd: {"module": sd},
    "state_dict": lambda sd: {"state_dict": sd, "optimizer": {}},
    "backbone_prefix": lambda sd: {"backbone." + k: v for k, v in sd.items()},
    "encoder_prefix_under_model": lambda sd: {"model": {"encoder." + k: v for k, v in sd.items()}},
    "ddp_prefix": lambda sd: {"module." + k: v for k, v in sd.items()},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_public_layouts_match_independent_forward(tmp_path, layout):
    state = random_state(public_shapes())
    path = tmp_path / "videomamba_t16_k400_f8_res224.pth"
    torch.save(LAYOUTS[layout](state), path)
    net = load_checkpoint(path)
    cfg, report = net.config, net.load_report
    assert (cfg.embed_dim, cfg.depth, cfg.num_classes, cfg.num_frames, cfg.img_size) == (C, DEPTH, CLASSES, 4, 48)
    assert (cfg.patch_size, cfg.tubelet, cfg.d_state, cfg.expand, cfg.dt_rank, cfg.d_conv) == (16, 1, 16, 2, 2, 4)
    assert report.format == "public" and report.grid == GRID and not report.inflated_kernel
    assert net.labels is None and not net.training
    clip = video()
    with torch.no_grad():
        logits = net(clip)
    assert_matches(logits, reference_forward(state, clip)[1])


def flexed_reference_state(state, patch, grid, frames):
    """A public state dict flexed to (patch, grid x grid tokens, frames), independently of
    model.flex: the kernel w* that keeps every token, <resize(x), w*> = <x, w> for all patches
    x, by least squares over the 2-D resize operator built from one-hot patches (torch's
    bilinear resize, antialiased when shrinking); the spatial embedding bicubic to the new grid
    (cls row apart, no antialias), the temporal one linear to the new frame count."""
    s = {k: v.double() for k, v in state.items()}
    kernel = s["patch_embed.proj.weight"]                      # (C, 3, 1, p, p)
    old = kernel.shape[-1]
    basis = torch.eye(old * old, dtype=torch.float64).reshape(old * old, 1, old, old)
    resize = F.interpolate(basis, size=(patch, patch), mode="bilinear", align_corners=False,
                           antialias=patch < old).reshape(old * old, patch * patch).T  # M: x -> Mx
    w = kernel.reshape(-1, old * old).T                        # (p*p, C*3)
    w_new = torch.linalg.lstsq(resize.T, w, driver="gelsd").solution   # M^T w* = w
    s["patch_embed.proj.weight"] = w_new.T.reshape(*kernel.shape[:3], patch, patch)
    pos = s["pos_embed"]
    old_grid = math.isqrt(pos.shape[1] - 1)
    spatial = pos[:, 1:].reshape(1, old_grid, old_grid, -1).permute(0, 3, 1, 2)
    spatial = F.interpolate(spatial, size=(grid, grid), mode="bicubic", align_corners=False)
    s["pos_embed"] = torch.cat([pos[:, :1], spatial.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], 1)
    temporal = s["temporal_pos_embedding"].permute(0, 2, 1)
    s["temporal_pos_embedding"] = F.interpolate(temporal, size=frames, mode="linear",
                                                align_corners=False).permute(0, 2, 1)
    return s


@pytest.mark.parametrize("patch, frames", [(8, 4), (12, 6), (24, 2)])
def test_flexed_forward_matches_an_independent_float64_flex(tmp_path, patch, frames):
    """The core feature against a reference that shares no code with it: a public checkpoint
    (native 48 px, patch 16, 4 frames) run at 48 px with patch 8, 12 (upsampled kernels: PI
    resize is exact) and 24 (shrunk: least squares), at other frame counts."""
    state = random_state(public_shapes())
    path = tmp_path / "public.pth"
    torch.save(state, path)
    net = load_checkpoint(path)
    pixels = GRID * PATCH
    clip = video(frames=frames, pixels=pixels)
    with torch.no_grad():
        logits = net(clip, patch=patch)
    reference = flexed_reference_state(state, patch, pixels // patch, frames)
    assert_matches(logits, reference_forward(reference, clip)[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_public_half_precision_loads_into_fp32(tmp_path, dtype):
    state = {k: v.to(dtype) for k, v in random_state(public_shapes(), seed=2).items()}
    torch.save({"model": state}, tmp_path / "half.pth")
    net = load_checkpoint(tmp_path / "half.pth")
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert net.load_report.source_dtypes == (str(dtype).replace("torch.", ""),)
    clip = video()
    with torch.no_grad():
        assert_matches(net(clip), reference_forward(state, clip)[1])


def test_native_frames_come_from_shapes_not_file_name(tmp_path):
    state = random_state(public_shapes(frames=4, grid=2, c=48))
    path = tmp_path / "videomamba_m16_k400_f64_res224.pth"
    torch.save(state, path)
    net = load_checkpoint(path)
    assert net.config.num_frames == 4 and net.load_report.num_frames == 4
    assert net.config.img_size == 32 and net.config.embed_dim == 48 and net.config.dt_rank == 3
    clip = video(frames=4, pixels=32)
    with torch.no_grad():
        assert_matches(net(clip), reference_forward(state, clip)[1])


def test_imagenet_kernel_is_inflated_and_temporal_embedding_zeroed(tmp_path):
    state = random_state(public_shapes(imagenet=True, classes=10), seed=4)
    torch.save({"model": state}, tmp_path / "videomamba_t16_in1k_res224.pth")
    net = load_checkpoint(tmp_path / "videomamba_t16_in1k_res224.pth", num_frames=4)
    report = net.load_report
    assert report.inflated_kernel and report.temporal_embedding == "zeros"
    assert any("inflated" in note for note in report.notes)
    assert net.config.num_frames == 4 and net.config.tubelet == 1
    assert torch.equal(net.temporal_pos_embedding, torch.zeros(1, 4, C))

    video_state = dict(state, **{"patch_embed.proj.weight": state["patch_embed.proj.weight"][:, :, None],
                                 "temporal_pos_embedding": torch.zeros(1, 4, C)})
    clip = video()
    with torch.no_grad():
        assert_matches(net(clip), reference_forward(video_state, clip)[1])

    # Default native frames, and a tubelet-2 network: the kernel is averaged over the tubelet.
    assert load_checkpoint(tmp_path / "videomamba_t16_in1k_res224.pth").config.num_frames == 8
    net2 = load_checkpoint(tmp_path / "videomamba_t16_in1k_res224.pth", tubelet=2)
    kernel = net2.patch_embed.proj.weight
    assert kernel.shape == (C, 3, 2, PATCH, PATCH) and net2.temporal_pos_embedding.shape == (1, 4, C)
    torch.testing.assert_close(kernel.sum(2), state["patch_embed.proj.weight"])


def test_headless_file_needs_num_classes(tmp_path):
    state = {k: v for k, v in random_state(public_shapes()).items() if not k.startswith("head.")}
    torch.save(state, tmp_path / "headless.pth")
    with pytest.raises(CheckpointError, match="no classification head.*num_classes"):
        load_checkpoint(tmp_path / "headless.pth")

    clip = video()
    feats_ref = reference_forward(state, clip)[0]
    net = load_checkpoint(tmp_path / "headless.pth", num_classes=7)
    assert net.load_report.head == "fresh" and net.config.num_classes == 7
    with torch.no_grad():
        assert net(clip).shape == (2, 7)
        assert_matches(net.features(clip), feats_ref)
    features_only = load_checkpoint(tmp_path / "headless.pth", num_classes=0)
    assert features_only.load_report.head == "none"
    with torch.no_grad():
        assert_matches(features_only(clip), feats_ref)


def test_public_head_replaced_on_request(tmp_path):
    torch.save(random_state(public_shapes()), tmp_path / "k400.pth")
    net = load_checkpoint(tmp_path / "k400.pth", num_classes=3)
    assert net.config.num_classes == 3 and net.load_report.head == "fresh"
    assert any("5-class head replaced" in note for note in net.load_report.notes)


# ----------------------------------------------------------------------------- bad checkpoints
def save_public(tmp_path, state, name="bad.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_missing_key_is_named(tmp_path):
    state = random_state(public_shapes())
    del state["layers.1.mixer.D_b"]
    with pytest.raises(CheckpointError, match=r"1 missing key: layers\.1\.mixer\.D_b"):
        load_checkpoint(save_public(tmp_path, state))


def test_missing_temporal_embedding_of_a_video_file_is_not_invented(tmp_path):
    state = random_state(public_shapes())
    del state["temporal_pos_embedding"]
    with pytest.raises(CheckpointError, match="missing key: temporal_pos_embedding"):
        load_checkpoint(save_public(tmp_path, state))


def test_unexpected_keys_are_named(tmp_path):
    state = random_state(public_shapes())
    state["layers.0.mixer.bogus"] = torch.zeros(3)
    state["vision_proj.weight"] = torch.zeros(4, C)
    with pytest.raises(CheckpointError, match="2 unexpected keys") as err:
        load_checkpoint(save_public(tmp_path, state))
    assert "layers.0.mixer.bogus" in str(err.value) and "vision_proj.weight" in str(err.value)


def test_shape_mismatch_is_named(tmp_path):
    state = random_state(public_shapes())
    state["head.bias"] = torch.zeros(CLASSES + 1)
    with pytest.raises(CheckpointError, match=r"1 shape mismatch: head\.bias \(file \[6\], model \[5\]\)"):
        load_checkpoint(save_public(tmp_path, state))


def test_all_problems_reported_at_once(tmp_path):
    state = random_state(public_shapes())
    del state["norm_f.weight"], state["layers.0.mixer.out_proj.weight"]
    state["extra_token"] = torch.zeros(1, 1, C)
    state["cls_token"] = torch.zeros(1, 2, C)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(save_public(tmp_path, state))
    message = str(err.value)
    for expected in ("2 missing keys", "norm_f.weight", "layers.0.mixer.out_proj.weight",
                     "1 unexpected key: extra_token", "1 shape mismatch: cls_token"):
        assert expected in message


def test_long_lists_are_truncated_with_counts(tmp_path):
    state = {k: v for k, v in random_state(public_shapes()).items() if not k.startswith("layers.1.")}
    state["layers.1.norm.weight"] = torch.ones(C)  # depth stays 2, the rest of layer 1 is missing
    with pytest.raises(CheckpointError, match=r"16 missing keys: .*\.\.\. \(8 more\)"):
        load_checkpoint(save_public(tmp_path, state))


def test_layers_of_different_widths(tmp_path):
    state = random_state(public_shapes())
    wide = random_state(public_shapes(c=64, depth=2))
    state.update({k: v for k, v in wide.items() if k.startswith("layers.1.")})
    with pytest.raises(CheckpointError, match="inconsistent shapes across layers") as err:
        load_checkpoint(save_public(tmp_path, state))
    assert "layers.*.mixer.A_log is [64, 16] in layers [0] but [128, 16] in layers [1]" in str(err.value)


def test_non_square_pos_embed(tmp_path):
    state = random_state(public_shapes())
    state["pos_embed"] = torch.zeros(1, 11, C)
    with pytest.raises(CheckpointError, match="pos_embed has 10 patch rows .* not a square"):
        load_checkpoint(save_public(tmp_path, state))


def test_nonexistent_path(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nowhere.pth"):
        load_checkpoint(tmp_path / "nowhere.pth")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_random_bytes_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"GIF89a" + os.urandom(500))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(junk)
    junk.write_bytes(b"\x80" + os.urandom(500))  # looks like a pickle, is not one
    with pytest.raises(CheckpointError, match="could not read"):
        load_checkpoint(junk)
    good = save_public(tmp_path, random_state(public_shapes()), "good.pth").read_bytes()
    junk.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="could not read"):
        load_checkpoint(junk)
    junk.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(junk)


class NotATensor:
    pass


CODE_RAN = []


def record_call(tag):
    CODE_RAN.append(tag)


class Payload:
    def __reduce__(self):
        return record_call, ("code from the file ran",)


def test_pickles_that_need_code_are_refused_without_running_it(tmp_path):
    state = random_state(public_shapes())
    path = save_public(tmp_path, {"model": state, "meta": NotATensor()})
    with pytest.raises(CheckpointError, match="not a plain state dict") as err:
        load_checkpoint(path)
    assert "NotATensor" in str(err.value)

    path = save_public(tmp_path, {"model": state, "meta": Payload()}, "payload.pth")
    with pytest.raises(CheckpointError, match="not a plain state dict.*record_call"):
        load_checkpoint(path)
    assert CODE_RAN == []


def test_files_without_a_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="holds a Tensor, not a state dict"):
        load_checkpoint(save_public(tmp_path, torch.zeros(3)))
    with pytest.raises(CheckpointError, match="dict with no tensors"):
        load_checkpoint(save_public(tmp_path, {"epoch": 3, "model": {"lr": 0.1}}))
    with pytest.raises(CheckpointError, match="entries that are not tensors: note"):
        load_checkpoint(save_public(tmp_path, dict(random_state(public_shapes()), note="hi")))
    with pytest.raises(CheckpointError, match="not a VideoMamba state dict"):
        load_checkpoint(save_public(tmp_path, {"fc.weight": torch.zeros(2, 2)}))


# ----------------------------------------------------------------------------- more ways in
def test_public_size_tiny_derives_the_preset(tmp_path):
    """Full public tiny layout (C=192, depth 24, 14x14 grid, 8 frames, 400 classes): the derived
    config is the tiny preset and the parameter count the published 7.0M."""
    from model import get_config

    shapes = public_shapes(c=192, depth=24, grid=14, frames=8, classes=400)
    torch.save({k: torch.zeros(s) for k, s in shapes.items()}, tmp_path / "tiny.pth")
    net = load_checkpoint(tmp_path / "tiny.pth")
    assert net.config == get_config("tiny")
    assert round(sum(p.numel() for p in net.parameters()) / 1e6, 1) == 7.0
    assert "C=192 depth=24" in net.load_report.summary()


def test_public_layout_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    state = random_state(public_shapes(), seed=5)
    save_file(state, str(tmp_path / "weights.safetensors"))
    net = load_checkpoint(tmp_path / "weights.safetensors")
    assert net.load_report.format == "public"
    clip = video()
    with torch.no_grad():
        assert_matches(net(clip), reference_forward(state, clip)[1])


def test_overrides_cannot_silently_change_stored_shapes(tmp_path):
    path = save_public(tmp_path, random_state(public_shapes()), "ok.pth")
    with pytest.raises(CheckpointError, match=r"temporal_pos_embedding \(file \[1, 4, 32\], model \[1, 16, 32\]\)"):
        load_checkpoint(path, num_frames=16)
    with pytest.raises(TypeError, match="unknown config overrides"):
        load_checkpoint(path, frames=16)
    net = load_checkpoint(path, backward_order="reverse_frames", patch_resize="bicubic")
    assert (net.config.backward_order, net.config.patch_resize) == ("reverse_frames", "bicubic")
