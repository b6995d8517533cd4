"""The semantic truth of the selective scan: a plain loop over time, like mamba-ssm's
selective_scan_ref, but computing in float64 when given float64 (mamba's upcasts to float32).

    delta' = softplus(delta + delta_bias)            (each step l, each channel d)
    h_l[d, n] = exp(delta'_l[d] * A[d, n]) * h_{l-1}[d, n] + delta'_l[d] * B_l[n] * u_l[d]
    y_l[d] = sum_n C_l[n] * h_l[d, n] + D[d] * u_l[d]
    out_l[d] = y_l[d] * silu(z_l[d])
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_bc(m: torch.Tensor, dim: int) -> torch.Tensor:
    """B or C as (batch, dim, N, L) or (dim, N) when constant."""
    if m.dim() == 2:  # (D, N): input-independent
        return m
    if m.dim() == 3:  # (batch, N, L): shared by every channel
        return m.unsqueeze(1)
    if m.dim() == 4:  # (batch, G, N, L): groups of channels
        return m.repeat_interleave(dim // m.shape[1], dim=1)
    raise ValueError(f"B/C must be 2-, 3- or 4-D, got shape {tuple(m.shape)}")


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """u, delta, z: (batch, D, L); A: (D, N); B, C: (batch, N, L), (batch, G, N, L) or (D, N);
    D, delta_bias: (D,). Returns out (batch, D, L) in u's dtype, and the last state
    (batch, D, N) when asked."""
    if A.is_complex():
        raise NotImplementedError("complex A is not supported")
    dtype_in = u.dtype
    work = torch.float64 if torch.float64 in (u.dtype, delta.dtype, A.dtype) else torch.float32
    u, delta, A = u.to(work), delta.to(work), A.to(work)
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    dim = A.shape[0]
    Bx, Cx = _expand_bc(B.to(work), dim), _expand_bc(C.to(work), dim)
    h = u.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    for l in range(u.shape[2]):
        dt = delta[:, :, l, None]  # (batch, D, 1)
        b_l = Bx if Bx.dim() == 2 else Bx[..., l]
        c_l = Cx if Cx.dim() == 2 else Cx[..., l]
        h = torch.exp(dt * A) * h + dt * b_l * u[:, :, l, None]
        ys.append((h * c_l).sum(-1))
    out = torch.stack(ys, dim=2)
    if D is not None:
        out = out + u * D.to(work)[:, None]
    if z is not None:
        out = out * F.silu(z.to(work))
    out = out.to(dtype_in)
    return (out, h) if return_last_state else out


def bidirectional_scan_ref(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, u_b, delta_b, A_b, B_b, C_b, D_b,
                           delta_bias_b, z=None, order=None, delta_softplus=True):
    """The fused bidirectional op (model.scan.triton.bidirectional_scan) composed from the scan:
    every tensor indexed by token position; the backward direction visits tokens order[0],
    order[1], ... (None: reversed) and its output lands at each token's position; the two
    outputs are summed, then gated once: (scan_f + scan_b) * silu(z)."""
    length = u_f.shape[-1]
    order = torch.arange(length - 1, -1, -1) if order is None else order.cpu()
    order = order.to(u_f.device)
    y_f = selective_scan_ref(u_f, delta_f, A_f, B_f, C_f, D_f, None, delta_bias_f, delta_softplus)
    scanned = selective_scan_ref(u_b[..., order], delta_b[..., order], A_b, B_b[..., order], C_b[..., order], D_b,
                                 None, delta_bias_b, delta_softplus)
    y_b = torch.empty_like(scanned)
    y_b[..., order] = scanned
    dtype = u_f.dtype
    work = torch.float64 if dtype == torch.float64 else torch.float32
    out = y_f.to(work) + y_b.to(work)
    if z is not None:
        out = out * F.silu(z.to(work))
    return out.to(dtype)
