"""Resampling functions: PI-resize's defining property, identities, differentiability."""
import pytest
import torch
import torch.nn.functional as F

from model import flex


@pytest.mark.parametrize("old,new", [(8, 8), (8, 12), (16, 32), (9, 16), (5, 13)])
def test_pi_resize_preserves_tokens_when_upsampling(old, new, fresh_seed):
    """<resize(x), w*> = <x, w> for every patch x, with resize the bilinear resize torch does."""
    g = torch.Generator().manual_seed(fresh_seed)
    w = torch.randn(6, 3, 2, old, old, generator=g, dtype=torch.float64)
    x = torch.randn(4, 3, 2, old, old, generator=g, dtype=torch.float64)
    w_new = flex.resize_patch_kernel(w, new, "pinv")
    x_new = F.interpolate(x.reshape(-1, 1, old, old), size=(new, new), mode="bilinear",
                          align_corners=False).reshape(4, 3, 2, new, new)
    before = torch.einsum("bctij,octij->bo", x, w)
    after = torch.einsum("bctij,octij->bo", x_new, w_new)
    assert torch.allclose(after, before, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("old,new", [(16, 8), (16, 12), (16, 4), (13, 5), (16, 24), (9, 16)])
def test_the_resize_matrix_is_torchs_2d_resize(old, new):
    """R @ x @ R.T is exactly what the frames go through: torch's bilinear resize, antialiased
    when shrinking (the PI-resize is only right if R is)."""
    x = torch.randn(5, 1, old, old, dtype=torch.float64)
    r = flex._linear_resize_matrix(old, new)
    torch_resize = F.interpolate(x, size=(new, new), mode="bilinear", align_corners=False,
                                 antialias=new < old)
    assert torch.allclose(r @ x[:, 0] @ r.T, torch_resize[:, 0], atol=1e-12)


def test_pi_resize_keeps_the_tokens_of_smooth_patches_when_shrinking():
    """A patch with no detail finer than the smaller patch (a 2x upsampled 8x8 image, as a
    frame shrunk to half its size shows it) keeps its token, close to exactly."""
    w = torch.randn(6, 3, 16, 16, dtype=torch.float64)
    small = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    x = F.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False)
    x_small = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    before = torch.einsum("bcij,ocij->bo", x, w)
    after = torch.einsum("bcij,ocij->bo", x_small, flex.resize_patch_kernel(w, 8, "pinv"))
    assert torch.corrcoef(torch.stack([before.flatten(), after.flatten()]))[0, 1] > 0.9


def test_pi_resize_downsampling_is_least_squares():
    """Shrinking cannot be exact; the result is the minimum-norm least-squares solution, so its
    residual is orthogonal to the range of the resize operator's transpose."""
    w = torch.randn(16, 16, dtype=torch.float64)
    w_small = flex.resize_patch_kernel(w, 8, "pinv")
    r = flex._linear_resize_matrix(16, 8)  # (8, 16)
    residual = w - r.T @ w_small @ r
    assert torch.allclose(r @ residual @ r.T, torch.zeros(8, 8, dtype=torch.float64), atol=1e-10)


def test_same_size_is_identity():
    w = torch.randn(4, 3, 1, 16, 16)
    assert flex.resize_patch_kernel(w, 16, "pinv") is w
    assert flex.resize_patch_kernel(w, 16, "bicubic") is w
    pos = torch.randn(1, 14 * 14, 8)
    assert flex.resample_spatial_pos_embed(pos, (14, 14), (14, 14)) is pos
    tpos = torch.randn(1, 8, 8)
    assert flex.resample_temporal_pos_embed(tpos, 8) is tpos
    joint = torch.randn(1, 4 * 9, 8)
    assert flex.resample_joint_pos_embed(joint, (4, 3, 3), (4, 3, 3)) is joint


def test_resampling_values():
    # constants stay constant under bicubic and linear resampling
    const = torch.full((1, 7 * 7, 3), 2.5, dtype=torch.float64)
    out = flex.resample_spatial_pos_embed(const, (7, 7), (10, 4))
    assert out.shape == (1, 40, 3) and torch.allclose(out, torch.full_like(out, 2.5))
    # linear interpolation of a ramp is a ramp (align_corners=False: sample centres)
    ramp = torch.arange(4, dtype=torch.float64).reshape(1, 4, 1)
    up = flex.resample_temporal_pos_embed(ramp, 8).flatten()
    assert torch.allclose(up[1:7], torch.tensor([0.25, 0.75, 1.25, 1.75, 2.25, 2.75], dtype=torch.float64))
    # the joint embedding: time linear, space bicubic
    joint = torch.randn(1, 2 * 3 * 3, 5, dtype=torch.float64)
    out = flex.resample_joint_pos_embed(joint, (2, 3, 3), (3, 5, 4))
    assert out.shape == (1, 3 * 5 * 4, 5)


def test_resampling_is_differentiable():
    w = torch.randn(4, 3, 1, 8, 8, requires_grad=True)
    pos = torch.randn(1, 16, 4, requires_grad=True)
    tpos = torch.randn(1, 4, 4, requires_grad=True)
    loss = (flex.resize_patch_kernel(w, 12, "pinv").sum() + flex.resize_patch_kernel(w, 6, "bicubic").sum()
            + flex.resample_spatial_pos_embed(pos, (4, 4), (6, 5)).pow(2).sum()
            + flex.resample_temporal_pos_embed(tpos, 9).pow(2).sum())
    loss.backward()
    for t in (w, pos, tpos):
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_bicubic_mode_and_bad_mode():
    w = torch.randn(2, 3, 1, 8, 8)
    assert flex.resize_patch_kernel(w, 12, "bicubic").shape == (2, 3, 1, 12, 12)
    with pytest.raises(ValueError, match="unknown patch resize"):
        flex.resize_patch_kernel(w, 12, "nearest")


def test_static_tokens_and_grids():
    assert flex.static_tokens_patch(224, 14) == 16
    assert flex.static_tokens_patch(128, 14) == 9 and 128 // 9 == 14
    assert flex.static_tokens_patch(384, 14) == 27 and 384 // 27 == 14
    assert flex.token_grid(8, 224, 16) == (8, 14, 14)
    assert flex.token_grid(9, (100, 70), 16, tubelet=2) == (4, 6, 4)
    assert flex.num_tokens(8, 224, 16) == 1569
