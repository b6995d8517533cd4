"""The fast CPU selective scan against the float64 reference, forward and gradients, on fresh
random inputs. Tolerance: the fp32 kernel is within 1e-4 of the float64 reference, relative to
the largest magnitude of the compared tensor (plus 1e-6 absolute)."""
import itertools
import platform

import pytest
import torch
import torch.nn.functional as F

from model import scan
from model.scan import cpu, pick_backend, selective_scan
from model.scan.reference import selective_scan_ref

from conftest import draw_seed

pytestmark = pytest.mark.skipif(not cpu.available(), reason="no C compiler for the CPU kernel")

RTOL = 1e-4


def assert_close(actual, expected, what=""):
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).abs().max().item()
    bound = RTOL * expected.abs().max().item() + 1e-6
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def make_inputs(batch, dim, state, length, *, channel_contiguous=True, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else draw_seed())

    def seq(scale=1.0):
        if channel_contiguous:
            return torch.randn(batch, length, dim, generator=g, dtype=torch.float64).transpose(1, 2) * scale
        return torch.randn(batch, dim, length, generator=g, dtype=torch.float64) * scale

    return dict(
        u=seq(), delta=seq(0.5), A=-torch.rand(dim, state, generator=g, dtype=torch.float64) * 3 - 0.05,
        B=torch.randn(batch, state, length, generator=g, dtype=torch.float64),
        C=torch.randn(batch, state, length, generator=g, dtype=torch.float64),
        D=torch.randn(dim, generator=g, dtype=torch.float64), z=seq(),
        delta_bias=torch.randn(dim, generator=g, dtype=torch.float64) * 0.5,
    )


CASES = [  # batch, dim, state, length, channel_contiguous
    (1, 16, 16, 1, True), (2, 37, 16, 50, True), (1, 64, 4, 33, False), (3, 20, 7, 17, True), (1, 5, 16, 9, False),
]
OPTIONS = list(itertools.product([True, False], [True, False], [True, False]))  # z, D+bias, softplus


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("use_z,use_d,softplus", OPTIONS)
def test_forward_and_gradients_match_reference(case, use_z, use_d, softplus):
    x64 = make_inputs(*case[:4], channel_contiguous=case[4])
    if not use_z:
        x64["z"] = None
    if not use_d:
        x64["D"] = x64["delta_bias"] = None
    if not softplus:  # a raw delta must be positive for a stable (decaying) scan
        x64["delta"] = x64["delta"].abs()
        if x64["delta_bias"] is not None:
            x64["delta_bias"] = x64["delta_bias"].abs()
    compare_with_reference(x64, softplus)


def compare_with_reference(x64: dict, softplus: bool):
    """Forward and every input's gradient: fp32 kernel vs float64 reference."""
    names = [k for k, v in x64.items() if v is not None]
    ref_in = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in x64.items()}
    fast_in = {k: (v.float().requires_grad_() if v is not None else None) for k, v in x64.items()}
    ref = selective_scan_ref(**ref_in, delta_softplus=softplus)
    out = cpu.selective_scan_cpu(**fast_in, delta_softplus=softplus)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert_close(out, ref, "forward")
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad.float())
    for k in names:
        assert_close(fast_in[k].grad, ref_in[k].grad, f"d{k}")

def test_last_state_and_half_precision_inputs():
    x = make_inputs(2, 24, 16, 40)
    ref, ref_last = selective_scan_ref(**x, delta_softplus=True, return_last_state=True)
    out, last = cpu.selective_scan_cpu(**{k: v.float() for k, v in x.items()}, delta_softplus=True,
                                       return_last_state=True)
    assert_close(out, ref, "out")
    assert_close(last, ref_last, "last state")
    for dtype in (torch.bfloat16, torch.float16):
        low = {k: (v.to(dtype) if k in ("u", "delta", "z") else v.float()) for k, v in x.items()}
        out = cpu.selective_scan_cpu(**low, delta_softplus=True)
        expected = selective_scan_ref(**{k: v.double() for k, v in low.items()}, delta_softplus=True)
        assert out.dtype == dtype
        err = (out.double() - expected).abs().max() / expected.abs().max()
        assert err < 1e-2  # rounding of the output to 8 (bf16) or 11 (fp16) bits


def test_order_and_accumulate_extensions():
    """The fused mixer visits tokens in a given order and sums both directions in one buffer."""
    x = {k: v.float() for k, v in make_inputs(2, 40, 16, 30).items()}
    order = torch.randperm(30)
    permuted = {k: (v[..., order] if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
    expected = torch.empty(2, 40, 30, dtype=torch.float64)
    expected[..., order] = selective_scan_ref(**{k: v.double() for k, v in permuted.items()}, delta_softplus=True)
    buffer = torch.randn(2, 30, 40)
    start = buffer.clone()
    out = cpu.forward(**x, delta_softplus=True, order=order, out=buffer)
    assert_close(out - start.transpose(1, 2), expected, "ordered scan")


def test_conv_silu_matches_torch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 25, 37, generator=g)
    conv = torch.nn.Conv1d(37, 37, 4, groups=37, padding=3)
    expected = F.silu(conv(x.transpose(1, 2))[..., :25]).transpose(1, 2)
    assert_close(cpu.conv_silu(x, conv.weight, conv.bias), expected, "conv")
    order = torch.arange(24, -1, -1)
    flipped = F.silu(conv(x.flip(1).transpose(1, 2))[..., :25]).transpose(1, 2).flip(1)
    assert_close(cpu.conv_silu(x, conv.weight, conv.bias, order), flipped, "reversed conv")


def test_dispatch(monkeypatch):
    u = torch.zeros(1, 2, 3)
    monkeypatch.delenv(scan.ENV, raising=False)
    assert pick_backend(u) == "cpu"
    assert pick_backend(u.double()) == "reference"  # float64 is the reference's job
    monkeypatch.setenv(scan.ENV, "reference")
    assert pick_backend(u) == "reference"
    monkeypatch.setenv(scan.ENV, "nonsense")
    with pytest.raises(ValueError, match="STRETCHYSNAKE_SCAN"):
        pick_backend(u)
    monkeypatch.setenv(scan.ENV, "mamba_ssm")
    if scan._mamba_ssm_fn() is None:
        with pytest.raises(RuntimeError, match="not available"):
            selective_scan(u, u, torch.zeros(2, 4), torch.zeros(1, 4, 3), torch.zeros(1, 4, 3))


def test_dispatch_routes_to_the_chosen_backend(monkeypatch):
    x = {k: v.float() for k, v in make_inputs(1, 16, 16, 12).items()}
    monkeypatch.setenv(scan.ENV, "reference")
    ref = selective_scan(**x, delta_softplus=True)
    monkeypatch.setenv(scan.ENV, "cpu")
    fast = selective_scan(**x, delta_softplus=True)
    assert_close(fast, ref, "dispatch")
    # grouped B/C are not the kernel's: the dispatcher hands them to the reference
    grouped = dict(x, B=x["B"][:, None], C=x["C"][:, None])
    assert_close(selective_scan(**grouped, delta_softplus=True), ref, "grouped")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 flag")
def test_portable_exp_path(monkeypatch):
    """Machines without AVX-512 compile the portable exp (clamped, integer exponent): build it
    here too and check it against the reference, forward and backward."""
    monkeypatch.setattr(cpu, "_lib", cpu._build(("-mno-avx512f",)))
    x64 = make_inputs(2, 40, 16, 30)
    x64["delta"] = x64["delta"] * 8  # reach very small and clamped exponents
    compare_with_reference(x64, softplus=True)


def test_causal_conv_silu_gradients(fresh_seed):
    g = torch.Generator().manual_seed(fresh_seed)
    x = torch.randn(3, 30, 21, generator=g, dtype=torch.float64)
    conv = torch.nn.Conv1d(21, 21, 4, groups=21, padding=3).double()
    ref_in = [x.clone().requires_grad_(), conv.weight.detach().clone().requires_grad_(),
              conv.bias.detach().clone().requires_grad_()]
    fast_in = [t.detach().float().requires_grad_() for t in ref_in]
    ref = F.silu(F.conv1d(ref_in[0].transpose(1, 2), ref_in[1], ref_in[2], padding=3, groups=21)[..., :30]).transpose(1, 2)
    out = cpu.causal_conv_silu(*fast_in)
    assert_close(out, ref, "conv forward")
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad.float())
    for name, a, b in zip(("dx", "dw", "db"), fast_in, ref_in):
        assert_close(a.grad, b.grad, name)


# ---- the mixer's op: both directions, conv + projections + scan (model/scan/bimamba.py) ---------
@pytest.mark.parametrize("path", ["fused inference", "differentiable", "reference backend"])
@pytest.mark.parametrize("order", ["reversed", "permuted"])
def test_bimamba_inner_matches_its_float64_reference(path, order, monkeypatch):
    """Every path of bimamba_inner against bimamba_inner_ref in float64, values and (where the
    path is differentiable) the gradients of x and of one weight."""
    from model.scan.bimamba import Direction, bimamba_inner, bimamba_inner_ref

    g = torch.Generator().manual_seed(draw_seed())
    batch, length, dim, state, rank, width = 2, 19, 12, 4, 3, 4

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    def direction():
        return Direction(rnd(dim, 1, width, scale=0.5), rnd(dim, scale=0.1),
                         rnd(rank + 2 * state, dim, scale=0.3), rnd(dim, rank, scale=0.5),
                         rnd(dim, scale=0.1), torch.log(torch.rand(dim, state, generator=g) + 0.5),
                         rnd(dim))

    forward, backward = direction(), direction()
    x, z = rnd(batch, length, dim), rnd(batch, length, dim)
    steps = torch.arange(length - 1, -1, -1) if order == "reversed" else torch.randperm(length, generator=g)
    if path == "reference backend":
        monkeypatch.setenv("STRETCHYSNAKE_SCAN", "reference")
    grads = path != "fused inference"
    xs = x.clone().requires_grad_(grads)
    fw = Direction(*(t.clone().requires_grad_(grads) for t in forward))
    with torch.set_grad_enabled(grads):
        out = bimamba_inner(xs, z, steps, fw, backward)
    x64 = x.double().requires_grad_(True)
    fw64 = Direction(*(t.double().requires_grad_(True) for t in forward))
    ref = bimamba_inner_ref(x64, z.double(), steps, fw64, Direction(*(t.double() for t in backward)))
    assert out.dtype == torch.float32 and out.shape == (batch, length, dim)
    assert_close(out, ref, "output")
    if grads:
        weights = torch.randn(ref.shape, generator=g, dtype=torch.float64)
        (out * weights.float()).sum().backward()
        (ref * weights).sum().backward()
        assert_close(xs.grad, x64.grad, "d x")
        assert_close(fw.x_proj_weight.grad, fw64.x_proj_weight.grad, "d x_proj")
