"""The bidirectional Mamba mixer's inner op (mamba-ssm's mamba_inner_fn, with two directions).

    y = bimamba_inner(x, z, order, forward, backward)      # (B, L, E) -> (B, L, E)

From the in-projection's halves x and z to the gated sum of both directions, before the
out-projection. Each direction, with its own weights (`Direction`):

    xc = silu(causal depthwise conv1d(x))           along the direction's token order
    dt, B, C = x_proj(xc) split (dt_rank, d_state, d_state);  delta = dt_proj.weight @ dt
    y = selective_scan(xc, delta, -exp(A_log), B, C, D, delta_bias=dt_proj.bias, softplus)

The forward direction visits the tokens in order, the backward one along `order` (a permutation
of positions), its outputs landing back at the tokens' own positions; then
out = (y_forward + y_backward) * silu(z).

The op picks its backend, the module makes one call: the fused CPU kernels (inference: both
directions read x and z in place, no permuted copies), the fused Triton kernels (one launch for
both convs, one for both scans), else each direction through `selective_scan` (the C kernel with
its backward on the CPU, mamba-ssm or the reference). `bimamba_inner_ref` beside it is the plain
composition, float64-capable, that every path is tested against.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import cpu as cpu_kernels
from . import pick_backend, selective_scan
from .reference import selective_scan_ref


class Direction(NamedTuple):
    """One direction's weights (the module's parameters, as they are)."""
    conv_weight: torch.Tensor     # (E, 1, K) depthwise, causal
    conv_bias: torch.Tensor       # (E,)
    x_proj_weight: torch.Tensor   # (dt_rank + 2 N, E)
    dt_proj_weight: torch.Tensor  # (E, dt_rank)
    dt_proj_bias: torch.Tensor    # (E,): the scan adds it to delta (as in mamba)
    A_log: torch.Tensor           # (E, N)
    D: torch.Tensor               # (E,)

    @property
    def A(self) -> torch.Tensor:
        return -torch.exp(self.A_log.float())

    def ssm_inputs(self, xc: torch.Tensor):
        """delta (without its bias), B and C, each (B, L, .), from the conv's output (B, L, E)."""
        rank, n = self.dt_proj_weight.shape[1], self.A_log.shape[1]
        dt, b_mat, c_mat = F.linear(xc, self.x_proj_weight).split([rank, n, n], -1)
        return F.linear(dt, self.dt_proj_weight), b_mat, c_mat


def bimamba_inner(x: torch.Tensor, z: torch.Tensor, order: torch.Tensor, forward: Direction,
                  backward: Direction) -> torch.Tensor:
    """x, z (B, L, E); order: the token positions in the backward scan's order. Returns the
    gated sum (B, L, E) in x's dtype (see the module docstring)."""
    if _fused_cpu_applies(x, forward):
        return _fused_cpu(x, z, order, forward, backward).to(x.dtype)
    if x.dtype != torch.float64 and pick_backend(x) == "triton":
        return _fused_triton(x, z, order, forward, backward)
    y = _direction(x, z, forward)
    y_b = torch.empty_like(y)
    y_b[:, order] = _direction(x[:, order], z[:, order], backward)
    return y + y_b


def bimamba_inner_ref(x: torch.Tensor, z: torch.Tensor, order: torch.Tensor, forward: Direction,
                      backward: Direction) -> torch.Tensor:
    """The op composed from torch's conv1d and the reference scan, float64 when given float64."""
    def direction(xs, zs, w: Direction):
        length = xs.shape[1]
        xc = F.silu(F.conv1d(xs.transpose(1, 2), w.conv_weight.to(xs.dtype), w.conv_bias.to(xs.dtype),
                             padding=w.conv_weight.shape[-1] - 1, groups=xs.shape[-1])[..., :length])
        xc = xc.transpose(1, 2)
        delta, b_mat, c_mat = Direction(*(t.to(xs.dtype) for t in w)).ssm_inputs(xc)
        a = -torch.exp(w.A_log.to(xs.dtype)) if xs.dtype == torch.float64 else w.A
        y = selective_scan_ref(xc.transpose(1, 2), delta.transpose(1, 2), a, b_mat.transpose(1, 2),
                               c_mat.transpose(1, 2), w.D.to(xs.dtype), delta_bias=w.dt_proj_bias.to(xs.dtype),
                               delta_softplus=True)
        return y.transpose(1, 2)

    y_f = direction(x, z, forward)
    y_b = torch.empty_like(y_f)
    y_b[:, order] = direction(x[:, order], z[:, order], backward)
    return (y_f + y_b) * F.silu(z.to(y_f.dtype))


# ----------------------------------------------------------------------------- backends
def _direction(x: torch.Tensor, z: torch.Tensor, w: Direction) -> torch.Tensor:
    """One direction in scan order, through `selective_scan` (differentiable everywhere)."""
    if pick_backend(x) == "cpu":  # torch's depthwise conv1d backward is slow on the CPU
        xc = cpu_kernels.causal_conv_silu(x, w.conv_weight, w.conv_bias)
    else:
        length = x.shape[1]
        xc = F.silu(F.conv1d(x.transpose(1, 2), w.conv_weight, w.conv_bias,
                             padding=w.conv_weight.shape[-1] - 1, groups=x.shape[-1])[..., :length])
        xc = xc.transpose(1, 2).contiguous()  # channel-contiguous, the scan kernel's layout
    delta, b_mat, c_mat = w.ssm_inputs(xc)
    y = selective_scan(xc.transpose(1, 2), delta.transpose(1, 2), w.A, b_mat.transpose(1, 2),
                       c_mat.transpose(1, 2), w.D.float(), z=z.transpose(1, 2),
                       delta_bias=w.dt_proj_bias.float(), delta_softplus=True)
    return y.transpose(1, 2)


def _fused_cpu_applies(x: torch.Tensor, w: Direction) -> bool:
    """The fused kernels have no backward: only for CPU inference, and only where the scan
    dispatch would pick the CPU kernel anyway (so STRETCHYSNAKE_SCAN=reference stays pure)."""
    if x.device.type != "cpu" or x.dtype == torch.float64:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or w.x_proj_weight.requires_grad):
        return False
    return pick_backend(x) == "cpu"


def _fused_cpu(x, z, order, forward: Direction, backward: Direction) -> torch.Tensor:
    """Both directions read x and z in place (the backward one through `order`) and accumulate
    into one gated output."""
    out = None
    for w, steps in ((forward, None), (backward, order)):
        xc = cpu_kernels.conv_silu(x, w.conv_weight, w.conv_bias, steps)
        delta, b_mat, c_mat = w.ssm_inputs(xc)
        y = cpu_kernels.forward(xc.transpose(1, 2), delta.transpose(1, 2), w.A, b_mat.transpose(1, 2),
                                c_mat.transpose(1, 2), w.D.float(), z=z.transpose(1, 2),
                                delta_bias=w.dt_proj_bias.float(), delta_softplus=True, order=steps,
                                out=out)
        out = y.transpose(1, 2)
    return out


def _fused_triton(x, z, order, forward: Direction, backward: Direction) -> torch.Tensor:
    """One launch for the two causal convs (the backward one along `order`, outputs at the
    tokens' own positions), the x/dt projections as usual, one launch for both scans, gated and
    summed; forward and backward. Nothing is permuted."""
    from . import triton as triton_scan
    xc_f, xc_b = triton_scan.conv_silu_pair(x, forward.conv_weight, forward.conv_bias,
                                            backward.conv_weight, backward.conv_bias, order)
    args = []
    for xc, w in ((xc_f, forward), (xc_b, backward)):
        delta, b_mat, c_mat = w.ssm_inputs(xc)
        u, d, b, c = (t.transpose(1, 2) for t in (xc, delta, b_mat, c_mat))
        args.append((u, d, w.A, b, c, w.D.float(), w.dt_proj_bias.float()))
    y = triton_scan.bidirectional_scan(*args[0], *args[1], z.transpose(1, 2), order)
    return y.transpose(1, 2)
