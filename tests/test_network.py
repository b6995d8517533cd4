"""The flexible network: shapes over configurations and presets, the KAIST variants, the fused
CPU inference path against the differentiable one, and the flexed-weight cache."""
import pytest
import torch

from model import PRESETS, VideoMambaConfig, build_model
from model.network import backward_order
from model.scan import cpu

SMALL = dict(embed_dim=32, depth=2, img_size=64, num_frames=4, num_classes=5)


def small_net(**overrides):
    torch.manual_seed(0)
    return build_model(VideoMambaConfig(**{**SMALL, **overrides}))


@pytest.mark.parametrize("frames,size,patch", [
    (1, (64, 64), 16), (4, (64, 64), 8), (3, (72, 40), 13), (8, (48, 64), 4), (5, (33, 33), 16),
])
def test_shapes_over_configurations(frames, size, patch):
    net = small_net().eval()
    video = torch.randn(2, 3, frames, *size)
    with torch.no_grad():
        assert net(video, patch=patch).shape == (2, 5)
        assert net.features(video, patch=patch).shape == (2, 32)


@pytest.mark.parametrize("preset,params", [("tiny", 7.0), ("small", 25.6), ("middle", 73.9)])
def test_public_presets(preset, params):
    net = build_model(preset, num_classes=400).eval()
    count = sum(p.numel() for p in net.parameters()) / 1e6
    assert abs(count - params) < 0.1, count  # the public VideoMamba sizes
    with torch.no_grad():
        assert net(torch.randn(1, 3, 2, 32, 48), patch=16).shape == (1, 400)


def test_nano_preset_is_small():
    cfg = PRESETS["nano"]
    assert 96 <= cfg.embed_dim <= 128 and 6 <= cfg.depth <= 8
    net = build_model("nano", num_classes=10).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 8, 112, 112)).shape == (1, 10)


@pytest.mark.parametrize("tubelet,pos_embed,order", [
    (2, "separable", "reverse"), (1, "joint", "reverse_within_frame"), (2, "joint", "reverse_frames"),
])
def test_kaist_variants_train(tubelet, pos_embed, order):
    net = small_net(tubelet=tubelet, pos_embed=pos_embed, backward_order=order).train()
    out = net(torch.randn(2, 3, 5, 48, 40), patch=8)
    out.sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    # the head reads the cls token, which the last layer's forward direction sees at step 0,
    # before any state exists: that A cannot matter
    assert missing == ["layers.1.mixer.A_log"], missing


def test_backward_orders():
    t, h, w = 2, 1, 3
    assert backward_order("reverse", (t, h, w)).tolist() == [6, 5, 4, 3, 2, 1, 0]
    assert backward_order("reverse_within_frame", (t, h, w)).tolist() == [3, 2, 1, 6, 5, 4, 0]
    assert backward_order("reverse_frames", (t, h, w)).tolist() == [4, 5, 6, 1, 2, 3, 0]


@pytest.mark.skipif(not cpu.available(), reason="no C compiler for the CPU kernel")
@pytest.mark.parametrize("order", ["reverse", "reverse_within_frame"])
def test_fused_inference_path_matches_differentiable_path(order, monkeypatch):
    """torch.no_grad on the CPU takes the fused kernels; the same weights through the
    differentiable path (autograd on) and through the plain reference scan agree."""
    net = small_net(backward_order=order).eval()
    video = torch.randn(2, 3, 4, 48, 56)
    with torch.no_grad():
        fused = net(video, patch=8)
    differentiable = net(video, patch=8)  # grad enabled, weights require grad: generic path
    monkeypatch.setenv("STRETCHYSNAKE_SCAN", "reference")
    with torch.no_grad():
        reference = net(video, patch=8)
    scale = reference.abs().max()
    assert (fused - reference).abs().max() <= 1e-4 * scale
    assert (differentiable - reference).abs().max() <= 1e-4 * scale


def test_native_configuration_uses_stored_weights():
    net = small_net().eval()
    kernel, positions = net._flexed(16, (4, 4, 4))
    assert torch.equal(kernel, net.patch_embed.proj.weight)
    expected = (net.temporal_pos_embedding[:, :, None] + net.pos_embed[:, None, 1:]).flatten(1, 2)
    assert torch.equal(positions[:, 1:], expected)
    assert torch.equal(positions[:, 0], (net.pos_embed[:, 0] + net.cls_token[:, 0]))


def test_flexed_weights_cached_in_eval_recomputed_in_training():
    net = small_net().eval()
    video = torch.randn(1, 3, 4, 48, 48)
    with torch.no_grad():
        first = net(video, patch=12)
        computed = net.flex_computations
        second = net(video, patch=12)  # already seen: no resampling work
        assert net.flex_computations == computed
        assert torch.equal(first, second)
        net(video, patch=6)
        assert net.flex_computations == computed + 1

    # training: recomputed every call, and gradients reach the stored weights through the resize
    net.train()
    before = net.flex_computations
    net(video, patch=12).sum().backward()
    net(video, patch=12)
    assert net.flex_computations == before + 2
    for p in (net.patch_embed.proj.weight, net.pos_embed, net.temporal_pos_embedding):
        assert p.grad is not None and p.grad.abs().sum() > 0

    # an in-place update of the weights (an optimizer step) invalidates the eval cache
    torch.optim.SGD(net.parameters(), lr=1.0).step()
    net.eval()
    with torch.no_grad():
        after = net(video, patch=12)
    assert not torch.allclose(after, first)


def test_bad_inputs_give_clear_errors():
    net = small_net(tubelet=2).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        net(torch.randn(3, 4, 32, 32))
    with pytest.raises(ValueError, match="at least 2 frames"):
        net(torch.randn(1, 3, 1, 32, 32))
    with pytest.raises(ValueError, match="smaller than one"):
        net(torch.randn(1, 3, 2, 32, 12), patch=16)
    with pytest.raises(ValueError, match="positive int"):
        net(torch.randn(1, 3, 2, 32, 32), patch=0)
    with pytest.raises(ValueError, match="unknown preset"):
        build_model("huge")
    with pytest.raises(ValueError, match="backward_order"):
        VideoMambaConfig(backward_order="sideways")


def test_sincos_pos_init():
    from model.network import sincos_1d, sincos_spatial
    default = small_net()
    assert torch.count_nonzero(default.temporal_pos_embedding) == 0  # VideoMamba's zeros
    assert 0.01 < default.pos_embed.std() < 0.03
    net = small_net(pos_init="sincos")
    grid = 64 // 16
    assert torch.equal(net.pos_embed[0, 1:], sincos_spatial(grid, 32))
    assert torch.equal(net.temporal_pos_embedding[0], sincos_1d(torch.arange(4.0), 32))
    # rows differ pairwise (every position distinguishable) and are unit-scale, not 0.02
    rows = net.pos_embed[0, 1:]
    assert torch.cdist(rows, rows).add(torch.eye(len(rows)) * 9).min() > 0.5
    assert 0.4 < rows.std() < 1.0
    joint = small_net(pos_init="sincos", pos_embed="joint")
    expected = (sincos_1d(torch.arange(4.0), 32)[:, None] + sincos_spatial(grid, 32)[None]).flatten(0, 1)
    assert torch.allclose(joint.pos_embed[0, 1:], expected)
    with pytest.raises(ValueError, match="pos_init"):
        VideoMambaConfig(pos_init="learned")


def test_temporal_first_scan_order():
    spatial, temporal = small_net().eval(), small_net(scan_order="temporal_first").eval()
    temporal.load_state_dict(spatial.state_dict())
    with torch.no_grad():
        one_frame = torch.randn(2, 3, 1, 64, 64)  # a single frame: both orders are the same sequence
        assert torch.allclose(spatial(one_frame), temporal(one_frame), atol=1e-5)
        clip = torch.randn(2, 3, 4, 64, 64)
        assert not torch.allclose(spatial(clip), temporal(clip), atol=1e-3)
        # temporal-first is spatial-first on the clip with its time and space axes swapped,
        # when the positional embeddings are zero (nothing else tells the axes apart)
        for net in (spatial, temporal):
            net.pos_embed.zero_()
            net.temporal_pos_embedding.zero_()
        # token (t, h, w) of `clip` becomes token t of frame h*4 + w in a 16-frame, 1x4-token video
        swapped = clip.unfold(3, 16, 16).unfold(4, 16, 16)  # (2, 3, 4, 4, 4, 16, 16): t, h, w, py, px
        swapped = swapped.permute(0, 1, 3, 4, 2, 5, 6).reshape(2, 3, 16, 4, 16, 16)  # (h w), t, py, px
        swapped = swapped.permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 16, 16, 4 * 16)  # frames (h w): 1 x 4 tokens
        assert torch.allclose(temporal(clip), spatial(swapped), atol=1e-4)
    with pytest.raises(ValueError, match="spatial_first"):
        VideoMambaConfig(scan_order="temporal_first", backward_order="reverse_frames")


def test_mean_pool_reads_every_patch_token():
    cls_net, mean_net = small_net().eval(), small_net(pool="mean").eval()
    mean_net.load_state_dict(cls_net.state_dict())  # same parameters: pooling adds none
    seen = {}
    for name, net in (("cls", cls_net), ("mean", mean_net)):
        net.norm_f.register_forward_hook(lambda module, args, out, name=name: seen.__setitem__(name, (args[0], out)))
    clip = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        cls_features, mean_features = cls_net.features(clip), mean_net.features(clip)
    residual, normed = seen["mean"]
    assert residual.shape == (2, 4 * 4 * 4, 32)  # the patch tokens, without cls
    assert torch.allclose(mean_features, normed.mean(1))
    assert seen["cls"][0].shape == (2, 32) and not torch.allclose(cls_features, mean_features)
    with pytest.raises(ValueError, match="pool"):
        VideoMambaConfig(pool="max")


def test_training_after_inference_at_the_same_grid():
    net = small_net()
    video = torch.randn(2, 3, 3, 48, 48)  # a grid no other test uses, so the order cache is cold
    with torch.inference_mode():
        net.eval()(video)
    net.train()(video).sum().backward()  # the cached backward order must not be an inference tensor
