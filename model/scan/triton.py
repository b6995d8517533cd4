"""Selective scan on the GPU in Triton: a fused bidirectional forward for the VideoMamba mixer, the
single-direction scan behind model.scan's `selective_scan` signature, a recompute-based backward,
and the mixer's two causal conv1d + SiLU passes in one launch.

Kernels (all compute in fp32; inputs fp32, bf16 or fp16; outputs in the input dtype):

- `_scan_fwd_kernel` / `_bidir_fwd_kernel`, grid (batch, cdiv(D, BLOCK_D)): one program (one
  warp) owns BLOCK_D channels of one sequence and walks the L tokens in order, state (N, BLOCK_D)
  fp32 in registers, 32 / BLOCK_D threads per channel (see FWD). Tokens go in groups of GROUP:
  the next group's u/delta tiles are loaded while the current group computes; per-token work
  (delta + bias, softplus, delta*u, D skip, silu(z) gate) runs on whole (GROUP, BLOCK_D) tiles;
  only exp(delta*A), the state update and C.h are per step; outputs leave as one tile per group.
  The bidirectional kernel runs the backward direction first, reading every input at token
  order[s] (arithmetic for the plain reversal, a gather otherwise: no permuted copies) and
  parking its ungated output at the token's own position; then the forward direction adds that
  partial, gates the sum once with silu(z) and stores the result. Every input is read once; the
  partial's round trip is the program's own slice, just written (L2). B and C are copied to fp32
  token-major first (_bc: N/D of the traffic) so that a token's N values come in vector loads.
- `_scan_bwd_kernel`, same grid: gradients by recomputation. Pass 1 runs the recurrence and
  checkpoints the state every CHUNK tokens; pass 2 walks the chunks backwards, recomputes a
  chunk's states into a per-program scratch, then runs the adjoint recurrence over it
  (dh_l = gy_l C_l + exp(dt_{l+1} A) dh_{l+1}). dB/dC are summed over channels per program
  (partials summed on the host); dA/dD per batch row. Three exp passes, no (L, D, N) tensor.
- `_conv_silu_pair_kernel`, grid (2 * batch, cdiv(L, BLOCK_L), cdiv(D, BLOCK_D)): both
  directions' silu(causal depthwise conv1d) of the mixer's x, the backward one along `order`,
  both written at the tokens' own positions (so x_proj and dt_proj run on them unchanged).
  Its backward is autograd through torch's conv1d (recomputed).

Everything here also runs on CPU tensors under TRITON_INTERPRET=1 (set before triton is first
imported), which is how the tests check it against model.scan.reference.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .reference import selective_scan_ref

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Launch shapes of the forward scan. A program is one warp holding BLOCK_D channels of one
# sequence, so 32 / BLOCK_D threads share a channel's N states: 1 (BLOCK_D=32) is the cheapest
# per state (B and C come in vector loads, no shuffles), more threads per channel buy parallelism
# when batch * D is small. None: chosen per call by _fwd_config; benchmarks/gpu.py sweeps them.
FWD = {"block_d": None, "num_warps": 1, "group": None}
BWD = {"block_d": 32, "num_warps": 1, "chunk": 64}
CONV = {"block_l": 32, "block_d": 64, "num_warps": 4}


# --------------------------------------------------------------------------- device helpers
@triton.jit
def _softplus(x):
    # log1p(exp(x)) with Goldberg's correction (exact where 1 + e rounds), identity past 20 as torch
    e = tl.exp(tl.minimum(x, 20.0))
    one_e = 1.0 + e
    lp = tl.where(one_e == 1.0, e, tl.log(one_e) * (e / (one_e - 1.0)))
    return tl.where(x > 20.0, x, lp)


@triton.jit
def _masked(mask, cond):
    # mask & scalar condition (tl.where: the interpreter rejects `tensor & scalar` as a mask)
    return tl.where(cond, mask, False)


@triton.jit
def _silu(x):
    return x / (1.0 + tl.exp(-x))


@triton.jit
def _position(s, L, order_ptr, ORDER: tl.constexpr):
    """Token visited at step s: 0 forward, 1 reversed (arithmetic), 2 through order[]."""
    if ORDER == 0:
        p = tl.cast(s, tl.int64)
    elif ORDER == 1:
        p = tl.cast(L - 1 - s, tl.int64)
    else:
        p = tl.load(order_ptr + s)
    return p


@triton.jit
def _positions(steps, L, order_ptr, ORDER: tl.constexpr):
    """Vector form of _position (steps past L give a valid dummy token: callers mask them)."""
    if ORDER == 0:
        p = tl.minimum(steps, L - 1).to(tl.int64)
    elif ORDER == 1:
        p = tl.maximum(L - 1 - steps, 0).to(tl.int64)
    else:
        p = tl.load(order_ptr + steps, mask=steps < L, other=0)
    return p


@triton.jit
def _row(tile, rows, i):
    # row i of a (GROUP, BLOCK_D) tile; -0.0 elsewhere because x + -0.0 == x folds away exactly
    return tl.sum(tl.where(rows[:, None] == i, tile, -0.0), axis=0)


@triton.jit
def _program_channels(D, N, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """The forward grid's program: its sequence, its BLOCK_D channels and the N state rows."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    return pid_b, offs_d, offs_d < D, offs_n, offs_n < N


@triton.jit
def _direction_setup(pid_b, offs_d, mask_d, offs_n, tile_mask, D,
                     u_ptr, su_b, su_d, dl_ptr, sd_b, sd_d, b_ptr, sb_b, sb_n, c_ptr, sc_b, sc_n,
                     z_ptr, sz_b, sz_d, a2_ptr, dskip_ptr, bias_ptr,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_D: tl.constexpr):
    """What one direction's forward and backward both start from: A * log2(e) as an (N, D) tile
    (computed on the host, so exp becomes one exp2), the D skip and delta bias of this program's
    channels (zeros where absent), and the per-sequence base pointers of u, delta, B, C and z."""
    a2 = tl.load(a2_ptr + offs_n[:, None] * D + offs_d[None, :], mask=tile_mask, other=0.0)
    if HAS_D:
        dskip = tl.load(dskip_ptr + offs_d, mask=mask_d, other=0.0)
    else:
        dskip = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0)
    else:
        bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    return (a2, dskip, bias, u_ptr + pid_b * su_b + offs_d * su_d, dl_ptr + pid_b * sd_b + offs_d * sd_d,
            b_ptr + pid_b * sb_b + offs_n * sb_n, c_ptr + pid_b * sc_b + offs_n * sc_n,
            z_ptr + pid_b * sz_b + offs_d * sz_d)


@triton.jit
def _scan_direction(pid_b, offs_d, mask_d, offs_n, mask_n, L, D,
                    u_ptr, su_b, su_d, su_l, dl_ptr, sd_b, sd_d, sd_l,
                    b_ptr, sb_b, sb_n, sb_l, c_ptr, sc_b, sc_n, sc_l,
                    a2_ptr, dskip_ptr, bias_ptr, z_ptr, sz_b, sz_d, sz_l,
                    out_ptr, so_b, so_d, so_l, order_ptr,
                    HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
                    ORDER: tl.constexpr, ACCUMULATE: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, GROUP: tl.constexpr):
    """One direction over the whole sequence; out[p] = (y_p [+ out[p]]) [* silu(z_p)].

    Steps go in groups of GROUP: the group's u/delta (GROUP, BLOCK_D) tiles were loaded during
    the previous group (so memory latency hides behind a group of exps, not one step), the
    per-token elementwise work (bias, softplus, delta*u, D skip, gate) runs on whole tiles, only
    the state update is per step (unrolled), and the group's outputs leave as one tile."""
    tile_mask = mask_n[:, None] & mask_d[None, :]
    a2, dskip, bias, u_base, dl_base, b_base, c_base, z_base = _direction_setup(
        pid_b, offs_d, mask_d, offs_n, tile_mask, D, u_ptr, su_b, su_d, dl_ptr, sd_b, sd_d,
        b_ptr, sb_b, sb_n, c_ptr, sc_b, sc_n, z_ptr, sz_b, sz_d, a2_ptr, dskip_ptr, bias_ptr,
        HAS_D, HAS_BIAS, BLOCK_D)
    o_base = out_ptr + pid_b * so_b + offs_d * so_d
    rows = tl.arange(0, GROUP)
    pos = _positions(rows, L, order_ptr, ORDER)
    ok = (rows < L)[:, None] & mask_d[None, :]
    u_next = tl.load(u_base[None, :] + pos[:, None] * su_l, mask=ok, other=0.0)
    dt_next = tl.load(dl_base[None, :] + pos[:, None] * sd_l, mask=ok, other=0.0)
    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for g0 in range(0, L, GROUP):
        steps = g0 + rows
        valid = steps < L
        pos = _positions(steps, L, order_ptr, ORDER)
        ok = valid[:, None] & mask_d[None, :]
        u = u_next.to(tl.float32)
        dt = dt_next.to(tl.float32)
        # prefetch the next group's inputs; they are waited for only one group later
        nxt = _positions(steps + GROUP, L, order_ptr, ORDER)
        ok_next = ((steps + GROUP) < L)[:, None] & mask_d[None, :]
        u_next = tl.load(u_base[None, :] + nxt[:, None] * su_l, mask=ok_next, other=0.0)
        dt_next = tl.load(dl_base[None, :] + nxt[:, None] * sd_l, mask=ok_next, other=0.0)
        if HAS_Z:
            zt = tl.load(z_base[None, :] + pos[:, None] * sz_l, mask=ok, other=0.0).to(tl.float32)
        if ACCUMULATE:
            partial = tl.load(o_base[None, :] + pos[:, None] * so_l, mask=ok, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[None, :]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(ok, dt, 0.0)  # steps past L leave the state alone (exp2(0) = 1, no input)
        dtu = dt * u
        y = tl.zeros((GROUP, BLOCK_D), dtype=tl.float32)
        for i in tl.static_range(GROUP):
            s = g0 + i
            p = _position(tl.minimum(s, L - 1), L, order_ptr, ORDER)
            bv = tl.load(b_base + p * sb_l, mask=mask_n, other=0.0).to(tl.float32)
            cv = tl.load(c_base + p * sc_l, mask=mask_n, other=0.0).to(tl.float32)
            h = tl.exp2(_row(dt, rows, i)[None, :] * a2) * h + bv[:, None] * _row(dtu, rows, i)[None, :]
            y = tl.where(rows[:, None] == i, tl.sum(h * cv[:, None], axis=0)[None, :], y)
        if HAS_D:
            y = y + dskip[None, :] * u
        if ACCUMULATE:
            y = y + partial
        if HAS_Z:
            y = y * _silu(zt)
        tl.store(o_base[None, :] + pos[:, None] * so_l, y.to(out_ptr.dtype.element_ty), mask=ok)
    return h


@triton.jit
def _store_state(state_ptr, pid_b, offs_d, mask_d, offs_n, mask_n, D, N, h):
    ptrs = state_ptr + (pid_b * D + offs_d[None, :]) * N + offs_n[:, None]
    tl.store(ptrs, h, mask=mask_n[:, None] & mask_d[None, :])


# Channel strides and lengths stay unspecialised (no "== 1", no "divisible by 16"): knowing that
# the channel stride is 1 makes the compiler vectorise tiles along channels and spread a
# channel's N states over many threads, then shuffle every step (checked in the SASS for sm_90).
# Unknown, every tensor keeps the default layout (a thread owns whole channels: its states, its
# tile columns), loads stay coalesced across threads and nothing is converted inside the loop.
# B/C strides are specialised: with one thread per channel a token's N values then come in
# vector loads.
def _ints(*names: str) -> list[str]:
    return [n for group in names for n in group.split()]


_FWD_INTS = _ints("su_b su_d su_l sd_b sd_d sd_l sz_b sz_d sz_l so_b so_d so_l L D")


@triton.jit(do_not_specialize=_FWD_INTS)
def _scan_fwd_kernel(u_ptr, su_b, su_d, su_l, dl_ptr, sd_b, sd_d, sd_l,
                     b_ptr, sb_b, sb_n, sb_l, c_ptr, sc_b, sc_n, sc_l,
                     a2_ptr, dskip_ptr, bias_ptr, z_ptr, sz_b, sz_d, sz_l,
                     out_ptr, so_b, so_d, so_l, state_ptr, L, D, N: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
                     STORE_STATE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     GROUP: tl.constexpr):
    pid_b, offs_d, mask_d, offs_n, mask_n = _program_channels(D, N, BLOCK_N, BLOCK_D)
    h = _scan_direction(pid_b, offs_d, mask_d, offs_n, mask_n, L, D,
                        u_ptr, su_b, su_d, su_l, dl_ptr, sd_b, sd_d, sd_l,
                        b_ptr, sb_b, sb_n, sb_l, c_ptr, sc_b, sc_n, sc_l,
                        a2_ptr, dskip_ptr, bias_ptr, z_ptr, sz_b, sz_d, sz_l,
                        out_ptr, so_b, so_d, so_l, u_ptr,
                        HAS_D, HAS_BIAS, SOFTPLUS, HAS_Z, 0, False, BLOCK_N, BLOCK_D, GROUP)
    if STORE_STATE:
        _store_state(state_ptr, pid_b, offs_d, mask_d, offs_n, mask_n, D, N, h)


@triton.jit(do_not_specialize=_ints("suf_b suf_d suf_l sdf_b sdf_d sdf_l sub_b sub_d sub_l sdb_b sdb_d sdb_l",
                                     "sz_b sz_d sz_l so_b so_d so_l L D"))
def _bidir_fwd_kernel(uf_ptr, suf_b, suf_d, suf_l, dlf_ptr, sdf_b, sdf_d, sdf_l,
                      bf_ptr, sbf_b, sbf_n, sbf_l, cf_ptr, scf_b, scf_n, scf_l, a2f_ptr, dskipf_ptr, biasf_ptr,
                      ub_ptr, sub_b, sub_d, sub_l, dlb_ptr, sdb_b, sdb_d, sdb_l,
                      bb_ptr, sbb_b, sbb_n, sbb_l, cb_ptr, scb_b, scb_n, scb_l, a2b_ptr, dskipb_ptr, biasb_ptr,
                      z_ptr, sz_b, sz_d, sz_l, out_ptr, so_b, so_d, so_l, order_ptr, L, D, N: tl.constexpr,
                      HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
                      ORDER_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                      GROUP: tl.constexpr):
    pid_b, offs_d, mask_d, offs_n, mask_n = _program_channels(D, N, BLOCK_N, BLOCK_D)
    # backward direction: ungated output parked at each token's own position in `out`
    _scan_direction(pid_b, offs_d, mask_d, offs_n, mask_n, L, D,
                    ub_ptr, sub_b, sub_d, sub_l, dlb_ptr, sdb_b, sdb_d, sdb_l,
                    bb_ptr, sbb_b, sbb_n, sbb_l, cb_ptr, scb_b, scb_n, scb_l,
                    a2b_ptr, dskipb_ptr, biasb_ptr, z_ptr, sz_b, sz_d, sz_l,
                    out_ptr, so_b, so_d, so_l, order_ptr,
                    HAS_D, HAS_BIAS, SOFTPLUS, False, ORDER_B, False, BLOCK_N, BLOCK_D, GROUP)
    # the forward pass reads those values back: make them visible whichever thread stored them
    tl.debug_barrier()
    _scan_direction(pid_b, offs_d, mask_d, offs_n, mask_n, L, D,
                    uf_ptr, suf_b, suf_d, suf_l, dlf_ptr, sdf_b, sdf_d, sdf_l,
                    bf_ptr, sbf_b, sbf_n, sbf_l, cf_ptr, scf_b, scf_n, scf_l,
                    a2f_ptr, dskipf_ptr, biasf_ptr, z_ptr, sz_b, sz_d, sz_l,
                    out_ptr, so_b, so_d, so_l, order_ptr,
                    HAS_D, HAS_BIAS, SOFTPLUS, HAS_Z, 0, True, BLOCK_N, BLOCK_D, GROUP)


@triton.jit
def _scan_bwd_kernel(u_ptr, su_b, su_d, su_l, dl_ptr, sd_b, sd_d, sd_l,
                     b_ptr, sb_b, sb_n, sb_l, c_ptr, sc_b, sc_n, sc_l,
                     a2_ptr, dskip_ptr, bias_ptr, z_ptr, sz_b, sz_d, sz_l, g_ptr, sg_b, sg_d, sg_l, order_ptr,
                     ckpt_ptr, scratch_ptr, du_ptr, ddl_ptr, y_ptr, dA_ptr, dD_ptr, dB_ptr, dC_ptr,
                     L, D, N, n_chunks,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
                     ORDER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr):
    """Gradients of one direction; every per-token tensor is read and written at the token's
    position p = order[s] (the same indexing as the forward). Outputs (fp32): du, ddelta, y
    (ungated, only with z) as (batch, L, D); dA (batch, BLOCK_N, D), dD (batch, D) per batch
    row; dB, dC (n_dblocks, batch, L, BLOCK_N) per channel block."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    batch = tl.num_programs(0)
    n_dblocks = tl.num_programs(1)
    j_d = tl.arange(0, BLOCK_D)
    offs_d = pid_d * BLOCK_D + j_d
    mask_d = offs_d < D
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    tile_mask = mask_n[:, None] & mask_d[None, :]
    a2, dskip, bias, u_base, dl_base, b_base, c_base, z_base = _direction_setup(
        pid_b, offs_d, mask_d, offs_n, tile_mask, D, u_ptr, su_b, su_d, dl_ptr, sd_b, sd_d,
        b_ptr, sb_b, sb_n, c_ptr, sc_b, sc_n, z_ptr, sz_b, sz_d, a2_ptr, dskip_ptr, bias_ptr,
        HAS_D, HAS_BIAS, BLOCK_D)
    a_raw = a2 * 0.6931471805599453  # A itself, for d(exp(dt A))/d dt
    g_base = g_ptr + pid_b * sg_b + offs_d * sg_d
    tok_base = pid_b * L * D + offs_d  # (batch, L, D) outputs
    ckpt_tile = (pid_b * n_chunks * BLOCK_N + offs_n[:, None]) * D + offs_d[None, :]
    scratch_tile = ((pid_b * n_dblocks + pid_d) * CHUNK * BLOCK_N + offs_n[:, None]) * BLOCK_D + j_d[None, :]
    bc_base = (pid_d * batch + pid_b) * L * BLOCK_N + offs_n

    # pass 1: the state entering every chunk
    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for s in range(0, L):
        tl.store(ckpt_ptr + ckpt_tile + (s // CHUNK) * BLOCK_N * D, h, mask=_masked(tile_mask, s % CHUNK == 0))
        p = _position(s, L, order_ptr, ORDER)
        u = tl.load(u_base + p * su_l, mask=mask_d, other=0.0).to(tl.float32)
        dt = tl.load(dl_base + p * sd_l, mask=mask_d, other=0.0).to(tl.float32)
        bv = tl.load(b_base + p * sb_l, mask=mask_n, other=0.0).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = _softplus(dt)
        h = tl.exp2(dt[None, :] * a2) * h + bv[:, None] * (dt * u)[None, :]
    tl.debug_barrier()

    # pass 2: chunks last to first; `carry` is exp(dt_{l+1} A) * dL/dh_{l+1}
    carry = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(0, n_chunks):
        c = n_chunks - 1 - i
        h0 = tl.load(ckpt_ptr + ckpt_tile + c * BLOCK_N * D, mask=tile_mask, other=0.0)
        h = h0
        for t in range(0, CHUNK):  # recompute the chunk's states (steps past L only decay h: unused)
            s = c * CHUNK + t
            valid = s < L
            p = _position(tl.minimum(s, L - 1), L, order_ptr, ORDER)
            u = tl.load(u_base + p * su_l, mask=_masked(mask_d, valid), other=0.0).to(tl.float32)
            dt = tl.load(dl_base + p * sd_l, mask=_masked(mask_d, valid), other=0.0).to(tl.float32)
            bv = tl.load(b_base + p * sb_l, mask=_masked(mask_n, valid), other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt = dt + bias
            if SOFTPLUS:
                dt = _softplus(dt)
            h = tl.exp2(dt[None, :] * a2) * h + bv[:, None] * (dt * u)[None, :]
            tl.store(scratch_ptr + scratch_tile + t * BLOCK_N * BLOCK_D, h)
        tl.debug_barrier()
        for j in range(0, CHUNK):
            t = CHUNK - 1 - j
            s = c * CHUNK + t
            valid = s < L  # steps past L: g = 0 keeps every gradient and the carry at zero
            p = _position(tl.minimum(s, L - 1), L, order_ptr, ORDER)
            u = tl.load(u_base + p * su_l, mask=_masked(mask_d, valid), other=0.0).to(tl.float32)
            dt_in = tl.load(dl_base + p * sd_l, mask=_masked(mask_d, valid), other=0.0).to(tl.float32)
            bv = tl.load(b_base + p * sb_l, mask=_masked(mask_n, valid), other=0.0).to(tl.float32)
            cv = tl.load(c_base + p * sc_l, mask=_masked(mask_n, valid), other=0.0).to(tl.float32)
            gy = tl.load(g_base + p * sg_l, mask=_masked(mask_d, valid), other=0.0).to(tl.float32)
            if HAS_BIAS:
                dt_in = dt_in + bias
            dt = dt_in
            if SOFTPLUS:
                dt = _softplus(dt_in)
            if HAS_Z:
                gy = gy * _silu(tl.load(z_base + p * sz_l, mask=_masked(mask_d, valid), other=0.0).to(tl.float32))
            a_l = tl.exp2(dt[None, :] * a2)
            h_l = tl.load(scratch_ptr + scratch_tile + t * BLOCK_N * BLOCK_D)
            h_prev = tl.load(scratch_ptr + scratch_tile + (t - 1) * BLOCK_N * BLOCK_D, mask=_masked(tile_mask, t > 0),
                             other=0.0)
            h_prev = tl.where(t > 0, h_prev, h0)
            grad_h = cv[:, None] * gy[None, :] + carry  # dL/dh_l
            gb = tl.sum(grad_h * bv[:, None], axis=0)
            du = dt * gb
            if HAS_D:
                du = du + dskip * gy
            decay_term = grad_h * a_l * h_prev
            ddt = tl.sum(decay_term * a_raw, axis=0) + u * gb
            dA_acc += decay_term * dt[None, :]
            if SOFTPLUS:
                ddt = ddt / (1.0 + tl.exp(-dt_in))  # softplus' = sigmoid
            dD_acc += gy * u
            tl.store(du_ptr + tok_base + p * D, du, mask=_masked(mask_d, valid))
            tl.store(ddl_ptr + tok_base + p * D, ddt, mask=_masked(mask_d, valid))
            tl.store(dC_ptr + bc_base + p * BLOCK_N, tl.sum(h_l * gy[None, :], axis=1), mask=_masked(mask_n, valid))
            tl.store(dB_ptr + bc_base + p * BLOCK_N, tl.sum(grad_h * (dt * u)[None, :], axis=1),
                     mask=_masked(mask_n, valid))
            if HAS_Z:  # ungated y, for dz on the host (the bidirectional op gates the sum)
                y = tl.sum(h_l * cv[:, None], axis=0)
                if HAS_D:
                    y = y + dskip * u
                tl.store(y_ptr + tok_base + p * D, y, mask=_masked(mask_d, valid))
            carry = a_l * grad_h
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(dA_ptr + (pid_b * BLOCK_N + offs_n[:, None]) * D + offs_d[None, :], dA_acc, mask=tile_mask)
    tl.store(dD_ptr + pid_b * D + offs_d, dD_acc, mask=mask_d)


@triton.jit
def _conv_silu_pair_kernel(x_ptr, sx_b, sx_l, sx_d, w_ptr, bias_ptr, out_ptr, order_ptr, batch, L, D,
                           K: tl.constexpr, ORDER_B: tl.constexpr, HAS_BIAS: tl.constexpr,
                           BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[dir, b, pos(s)] = silu(bias + sum_k w[dir, :, k] * x[b, pos(s - K + 1 + k)]); pos is the
    identity for dir 0 and the backward order for dir 1 (taps before the first step are zero)."""
    pid = tl.program_id(0)
    direction = pid % 2
    backward = direction == 1
    pid_b = (pid // 2).to(tl.int64)
    offs_s = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_s = offs_s < L
    mask_d = offs_d < D
    acc = tl.zeros((BLOCK_L, BLOCK_D), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + direction * D + offs_d, mask=mask_d, other=0.0)[None, :]
    x_base = x_ptr + pid_b * sx_b + offs_d[None, :] * sx_d
    for k in tl.static_range(K):
        step = offs_s - (K - 1) + k
        ok = (step >= 0) & mask_s
        step = tl.maximum(step, 0)
        if ORDER_B == 1:
            pos_b = L - 1 - step
        else:
            pos_b = tl.load(order_ptr + step, mask=_masked(ok, backward), other=0)
        pos = tl.where(backward, pos_b, step).to(tl.int64)
        xv = tl.load(x_base + pos[:, None] * sx_l, mask=ok[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        wk = tl.load(w_ptr + (direction * D + offs_d) * K + k, mask=mask_d, other=0.0)
        acc += xv * wk[None, :]
    if ORDER_B == 1:
        out_b = L - 1 - offs_s
    else:
        out_b = tl.load(order_ptr + offs_s, mask=_masked(mask_s, backward), other=0)
    out_pos = tl.where(backward, out_b, offs_s).to(tl.int64)
    ptrs = out_ptr + ((direction * batch + pid_b) * L + out_pos[:, None]) * D + offs_d[None, :]
    tl.store(ptrs, _silu(acc).to(out_ptr.dtype.element_ty), mask=mask_s[:, None] & mask_d[None, :])


# --------------------------------------------------------------------------- host side
def _check_device(t: torch.Tensor):
    if t.device.type != "cuda" and not INTERPRET:
        raise RuntimeError("the Triton kernels need CUDA tensors, or TRITON_INTERPRET=1 set before triton is first "
                           "imported to interpret them on the CPU")


def _block_d(dim: int, cfg: dict) -> int:
    return min(cfg["block_d"], max(16, triton.next_power_of_2(dim)))


def _fwd_config(batch: int, dim: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_D, num_warps, GROUP) for the forward scan: the fewest threads per channel that still
    give every SM about four warps (issue and latency hiding), FWD's entries where set."""
    if INTERPRET:  # small groups, so that tiny test sequences span several (prefetch, last group)
        return _block_d(dim, {"block_d": FWD["block_d"] or 16}), 1, 4
    block_d = FWD["block_d"]
    if block_d is None:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        per_channel = 1
        while per_channel < 8 and batch * dim * per_channel < 4 * sms * 32:
            per_channel *= 2
        block_d = 32 // per_channel
    group = FWD["group"] or (8 if block_d >= 32 else 16)
    return block_d, FWD["num_warps"] if block_d > 32 else 1, group


def _launch_opts(cfg: dict, *keys) -> dict:
    return {} if INTERPRET else {k: cfg[k] for k in keys if k in cfg}


def _a2(A: torch.Tensor) -> torch.Tensor:
    """A * log2(e) as (N, D) fp32: the kernels' exp(dt A) is one exp2."""
    return (A.detach().float() * LOG2E).t().contiguous()


def _f32(t):
    return None if t is None else t.detach().float().contiguous()


def _strides(t, n=3):
    return tuple(t.stride()) if t is not None else (0,) * n


def _bc(t: torch.Tensor) -> torch.Tensor:
    """B or C (batch, N, L) as fp32 with each token's N values contiguous and 16-byte aligned: the
    kernel then reads a token's B in vector loads with no conversions. Views of x_proj's output
    are neither, so this copies (N/D of the scan's traffic: 1.4% for VideoMamba)."""
    if t.dtype == torch.float32 and t.stride(1) == 1 and t.stride(2) % 4 == 0 and t.data_ptr() % 16 == 0:
        return t
    return t.detach().transpose(1, 2).to(torch.float32, memory_format=torch.contiguous_format).transpose(1, 2)


def _out_like(u: torch.Tensor, dtype=None) -> torch.Tensor:
    """(batch, D, L) output laid out like u: channel-contiguous when u is (the model's layout)."""
    batch, dim, length = u.shape
    dtype = dtype or u.dtype
    if u.stride(1) == 1 and dim > 1:
        return torch.empty(batch, length, dim, device=u.device, dtype=dtype).transpose(1, 2)
    return torch.empty(batch, dim, length, device=u.device, dtype=dtype)


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state):
    _check_device(u)
    batch, dim, length = u.shape
    n = A.shape[1]
    a2, dskip, bias = _a2(A), _f32(D), _f32(delta_bias)
    out = _out_like(u)
    B, C = _bc(B), _bc(C)
    state = torch.empty(batch, dim, n, device=u.device, dtype=torch.float32) if return_last_state else a2
    block_d, warps, group = _fwd_config(batch, dim, u.device)
    grid = (batch, triton.cdiv(dim, block_d))
    _scan_fwd_kernel[grid](
        u, *u.stride(), delta, *delta.stride(), B, *B.stride(), C, *C.stride(),
        a2, dskip if dskip is not None else a2, bias if bias is not None else a2,
        z if z is not None else u, *_strides(z), out, *out.stride(), state, length, dim, n,
        HAS_D=dskip is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus), HAS_Z=z is not None,
        STORE_STATE=bool(return_last_state), BLOCK_N=triton.next_power_of_2(n), BLOCK_D=block_d,
        GROUP=group, **_launch_opts({"num_warps": warps}, "num_warps"))
    return out, (state if return_last_state else None)


def _scan_backward(g, u, delta, A, B, C, D, z, delta_bias, softplus, order_mode=0, order=None):
    """Gradients of one direction (z gates its own output here, or the sum of two directions in
    the bidirectional op: dz is left to the caller, which gets the ungated y). fp32 results:
    du, ddelta, dA, dB, dC, dD, dbias, y."""
    _check_device(u)
    batch, dim, length = u.shape
    n = A.shape[1]
    a2, dskip, bias = _a2(A), _f32(D), _f32(delta_bias)
    block_d = _block_d(dim, BWD)
    block_n = triton.next_power_of_2(n)
    chunk = BWD["chunk"] if not INTERPRET else min(BWD["chunk"], 8)
    n_chunks = triton.cdiv(length, chunk)
    n_dblocks = triton.cdiv(dim, block_d)
    dev, f32 = u.device, torch.float32
    ckpt = torch.empty(batch, n_chunks, block_n, dim, device=dev, dtype=f32)
    scratch = torch.empty(batch, n_dblocks, chunk, block_n, block_d, device=dev, dtype=f32)
    du = torch.empty(batch, length, dim, device=dev, dtype=f32)
    ddelta = torch.empty_like(du)
    y = torch.empty_like(du) if z is not None else du
    dA = torch.empty(batch, block_n, dim, device=dev, dtype=f32)
    dD = torch.empty(batch, dim, device=dev, dtype=f32)
    dB = torch.empty(n_dblocks, batch, length, block_n, device=dev, dtype=f32)
    dC = torch.empty_like(dB)
    _scan_bwd_kernel[(batch, n_dblocks)](
        u, *u.stride(), delta, *delta.stride(), B, *B.stride(), C, *C.stride(),
        a2, dskip if dskip is not None else a2, bias if bias is not None else a2,
        z if z is not None else u, *_strides(z), g, *g.stride(), order if order is not None else a2,
        ckpt, scratch, du, ddelta, y, dA, dD, dB, dC, length, dim, n, n_chunks,
        HAS_D=dskip is not None, HAS_BIAS=bias is not None, SOFTPLUS=bool(softplus), HAS_Z=z is not None,
        ORDER=order_mode, BLOCK_N=block_n, BLOCK_D=block_d, CHUNK=chunk, **_launch_opts(BWD, "num_warps"))
    du, ddelta = du.transpose(1, 2), ddelta.transpose(1, 2)
    return dict(u=du, delta=ddelta, A=dA.sum(0)[:n].t(), B=dB.sum(0)[..., :n].transpose(1, 2),
                C=dC.sum(0)[..., :n].transpose(1, 2), D=dD.sum(0), delta_bias=ddelta.sum((0, 2)),
                y=y.transpose(1, 2) if z is not None else None)


def _dsilu(z: torch.Tensor) -> torch.Tensor:
    sig = torch.sigmoid(z)
    return sig * (1 + z * (1 - sig))


def _grad_like(grad, ref, needed=True):
    return None if ref is None or grad is None or not needed else grad.to(ref.dtype)


class _ScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state):
        out, state = _scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, return_last_state)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.softplus = softplus
        if return_last_state:
            ctx.mark_non_differentiable(state)  # as mamba-ssm: no gradient through the last state
            return out, state
        return out

    @staticmethod
    def backward(ctx, dout, *unused):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        g = _scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, ctx.softplus)
        need = ctx.needs_input_grad
        dz = dout.float() * g["y"] * _dsilu(z.float()) if z is not None and need[6] else None
        names = ("u", "delta", "A", "B", "C", "D")
        return (*(_grad_like(g[k], t, need[i]) for i, (k, t) in enumerate(zip(names, (u, delta, A, B, C, D)))),
                _grad_like(dz, z), _grad_like(g["delta_bias"], delta_bias, need[7]), None, None)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    """model.scan's selective_scan on the Triton kernels (forward and recompute backward).
    Forms the kernels do not take go to the reference: constant (D, N) or grouped B/C, complex A,
    float64 (the kernels compute in fp32)."""
    if B.dim() != 3 or C.dim() != 3 or A.is_complex() or torch.float64 in (u.dtype, delta.dtype, A.dtype):
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    return _ScanFn.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(return_last_state))


# --------------------------------------------------------------------------- bidirectional
_ORDERS: dict = {}


def _order_mode(order: torch.Tensor | None, length: int, device: torch.device):
    """(1, None) for the plain reversal (indices computed in the kernel), else (2, int64 indices
    on the device). Checked once per order tensor (cached, holding a reference so the key's
    address stays its own): it must be a permutation, every token visited once."""
    if order is None:
        return 1, None
    key = (order.data_ptr(), order.device, order._version, order.numel(), device)
    hit = _ORDERS.get(key)
    if hit is not None:
        return hit[1], hit[2]
    idx = order.detach().to("cpu", torch.int64)
    if idx.shape != (length,) or not torch.equal(idx.sort().values, torch.arange(length)):
        raise ValueError(f"order must be a permutation of range({length}), got shape {tuple(order.shape)}")
    if torch.equal(idx, torch.arange(length - 1, -1, -1)):
        mode, dev_idx = 1, None
    else:
        with torch.inference_mode(False):  # cached: an inference tensor here would break later training
            mode, dev_idx = 2, idx.to(device)
    if len(_ORDERS) >= 256:
        _ORDERS.pop(next(iter(_ORDERS)))
    _ORDERS[key] = (order, mode, dev_idx)
    return mode, dev_idx


class _BiScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, order_mode, order, softplus, u_f, delta_f, A_f, B_f, C_f, D_f, bias_f,
                u_b, delta_b, A_b, B_b, C_b, D_b, bias_b, z):
        _check_device(u_f)
        batch, dim, length = u_f.shape
        n = A_f.shape[1]
        out = _out_like(u_f)
        bf_k, cf_k, bb_k, cb_k = _bc(B_f), _bc(C_f), _bc(B_b), _bc(C_b)
        a2f, a2b = _a2(A_f), _a2(A_b)
        dsf, dsb, bf, bb = _f32(D_f), _f32(D_b), _f32(bias_f), _f32(bias_b)
        has_d, has_bias = dsf is not None, bf is not None
        block_d, warps, group = _fwd_config(batch, dim, u_f.device)
        _bidir_fwd_kernel[(batch, triton.cdiv(dim, block_d))](
            u_f, *u_f.stride(), delta_f, *delta_f.stride(), bf_k, *bf_k.stride(), cf_k, *cf_k.stride(),
            a2f, dsf if has_d else a2f, bf if has_bias else a2f,
            u_b, *u_b.stride(), delta_b, *delta_b.stride(), bb_k, *bb_k.stride(), cb_k, *cb_k.stride(),
            a2b, dsb if has_d else a2b, bb if has_bias else a2b,
            z if z is not None else u_f, *_strides(z), out, *out.stride(),
            order if order is not None else a2f, length, dim, n,
            HAS_D=has_d, HAS_BIAS=has_bias, SOFTPLUS=bool(softplus), HAS_Z=z is not None, ORDER_B=order_mode,
            BLOCK_N=triton.next_power_of_2(n), BLOCK_D=block_d, GROUP=group,
            **_launch_opts({"num_warps": warps}, "num_warps"))
        ctx.save_for_backward(u_f, delta_f, A_f, B_f, C_f, D_f, bias_f, u_b, delta_b, A_b, B_b, C_b, D_b, bias_b, z)
        ctx.order_mode, ctx.order, ctx.softplus = order_mode, order, softplus  # indices: no autograd
        return out

    @staticmethod
    def backward(ctx, dout):
        saved = ctx.saved_tensors
        fwd, bwd, z, order = saved[:7], saved[7:14], saved[14], ctx.order
        gf = _scan_backward(dout, *fwd[:6], z, fwd[6], ctx.softplus)
        gb = _scan_backward(dout, *bwd[:6], z, bwd[6], ctx.softplus, ctx.order_mode, order)
        need = ctx.needs_input_grad[3:]
        dz = dout.float() * (gf["y"] + gb["y"]) * _dsilu(z.float()) if z is not None and need[14] else None
        names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
        grads = [_grad_like(g[k], t) for g, ts in ((gf, fwd), (gb, bwd)) for k, t in zip(names, ts)]
        return (None, None, None, *(gr if n else None for gr, n in zip(grads, need)), _grad_like(dz, z))


def bidirectional_scan(u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f, u_b, delta_b, A_b, B_b, C_b, D_b,
                       delta_bias_b, z=None, order=None, delta_softplus=True):
    """Both directions of a VideoMamba mixer in one launch:

        out = (scan_f + scan_b) * silu(z)

    Every tensor is indexed by token position, mamba-ssm's layout: u, delta, z (batch, D, L);
    A (D, N); B, C (batch, N, L); D, delta_bias (D,). scan_f is the selective scan over tokens
    0..L-1 with the forward tensors; scan_b the scan that visits tokens order[0], order[1], ...
    with the backward tensors, its output landing at each token's own position (order=None: the
    plain reversal). The kernel reads the backward tensors through `order`; nothing is permuted.
    Differentiable (recompute-based Triton backward). Reference: reference.bidirectional_scan_ref."""
    length = u_f.shape[-1]
    mode, dev_order = _order_mode(order, length, u_f.device)
    return _BiScanFn.apply(mode, dev_order, bool(delta_softplus), u_f, delta_f, A_f, B_f, C_f, D_f, delta_bias_f,
                           u_b, delta_b, A_b, B_b, C_b, D_b, delta_bias_b, z)


# --------------------------------------------------------------------------- conv1d + SiLU
def _conv_pair_torch(x, weight_f, bias_f, weight_b, bias_b, order):
    """The plain torch composition (and the backward's recompute): (batch, L, D) each."""
    length, k = x.shape[1], weight_f.shape[-1]
    order = torch.arange(length - 1, -1, -1, device=x.device) if order is None else order.to(x.device)

    def conv(seq, w, b):
        out = F.conv1d(seq.transpose(1, 2), w.reshape(w.shape[0], 1, k), b, padding=k - 1, groups=w.shape[0])
        return F.silu(out[..., :length]).transpose(1, 2)

    back = torch.empty_like(x)
    back[:, order] = conv(x[:, order], weight_b, bias_b)
    return conv(x, weight_f, bias_f), back


class _ConvPairFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight_f, bias_f, weight_b, bias_b, order_mode, order):
        _check_device(x)
        batch, length, dim = x.shape
        k = weight_f.shape[-1]
        w = torch.stack([weight_f.detach().reshape(dim, k), weight_b.detach().reshape(dim, k)]).float().contiguous()
        has_bias = bias_f is not None
        bias = torch.stack([bias_f.detach(), bias_b.detach()]).float().contiguous() if has_bias else w
        out = torch.empty(2, batch, length, dim, device=x.device, dtype=x.dtype)
        block_l = CONV["block_l"] if not INTERPRET else min(CONV["block_l"], triton.next_power_of_2(length))
        block_d = _block_d(dim, CONV)
        grid = (2 * batch, triton.cdiv(length, block_l), triton.cdiv(dim, block_d))
        _conv_silu_pair_kernel[grid](x, *x.stride(), w, bias, out, order if order is not None else w, batch, length,
                                     dim, K=k, ORDER_B=order_mode, HAS_BIAS=has_bias, BLOCK_L=block_l,
                                     BLOCK_D=block_d, **_launch_opts(CONV, "num_warps"))
        ctx.save_for_backward(x, weight_f, bias_f, weight_b, bias_b)
        ctx.order_mode, ctx.order = order_mode, order
        return out[0], out[1]

    @staticmethod
    def backward(ctx, g_f, g_b):
        # autograd through torch's conv1d, recomputed: the backward is not the hot path here
        x, weight_f, bias_f, weight_b, bias_b = ctx.saved_tensors
        order = ctx.order
        inputs = [t.detach().requires_grad_() if t is not None else None
                  for t in (x, weight_f, bias_f, weight_b, bias_b)]
        with torch.enable_grad():
            outs = _conv_pair_torch(*inputs, order if ctx.order_mode == 2 else None)
            pairs = [(o, g) for o, g in zip(outs, (g_f, g_b)) if g is not None]
            wanted = [t for t in inputs if t is not None]
            grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
        result = [next(grads) if t is not None else None for t in inputs]
        return (*result, None, None)


def conv_silu_pair(x, weight_f, bias_f, weight_b, bias_b, order=None):
    """silu(causal depthwise conv1d) of x (batch, L, D) in both scan directions, one launch: the
    forward over tokens 0..L-1, the backward over order[0], order[1], ... (None: reversed), each
    output at the tokens' own positions. Weights (D, 1, K) or (D, K). Returns (x_f, x_b), each
    (batch, L, D) contiguous in x's dtype."""
    mode, dev_order = _order_mode(order, x.shape[1], x.device)
    return _ConvPairFn.apply(x, weight_f, bias_f, weight_b, bias_b, mode, dev_order)
