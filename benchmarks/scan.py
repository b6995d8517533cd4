"""Selective scan on the CPU: the fast kernel against a reference written like mamba-ssm's
selective_scan_ref (delta*A and delta*B*u materialised, then a Python loop over time), and
against the project's own reference, forward and forward+backward, in one run.

    python benchmarks/scan.py            # VideoMamba-tiny's scan: D=384, N=16, L=1569 (8 x 224 px)
    python benchmarks/scan.py --quick    # smaller shape, a few seconds

Writes benchmarks/results/scan.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import print_table, save, scan_shape_args, timeit  # noqa: E402
from model.scan import cpu  # noqa: E402
from model.scan.reference import selective_scan_ref  # noqa: E402


def mamba_style_ref(u, delta, A, B, C, D, z, delta_bias):
    """The shape of mamba-ssm's selective_scan_ref (real A, B/C (batch, N, L), softplus on)."""
    dtype = u.dtype
    u, delta = u.float(), F.softplus(delta.float() + delta_bias[..., None].float())
    x = A.new_zeros((u.shape[0], A.shape[0], A.shape[1]))
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B.float(), u)
    ys = []
    for i in range(u.shape[2]):
        x = delta_a[:, :, i] * x + delta_b_u[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", x, C[:, :, i].float()))
    out = torch.stack(ys, dim=2) + u * D[:, None]
    return (out * F.silu(z.float())).to(dtype)


def inputs(batch, dim, state, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    # channel-contiguous, as the model lays them out
    u, delta, z = (torch.randn(batch, length, dim, generator=g).transpose(1, 2) for _ in range(3))
    A = -torch.rand(dim, state, generator=g) * 4 - 0.05
    B, C = torch.randn(batch, state, length, generator=g), torch.randn(batch, state, length, generator=g)
    D, bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g) * 0.5 - 2
    return u, delta * 0.5, A, B, C, D, z, bias


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    scan_shape_args(ap, batch=1, dim=384)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="D=128, L=400")
    args = ap.parse_args()
    if args.quick:
        args.dim, args.length, args.repeats = 128, 400, 3
    shape = dict(batch=args.batch, D=args.dim, N=args.state, L=args.length)
    print(f"selective scan, fp32, {shape}, z + D + delta_bias + softplus, {torch.get_num_threads()} threads")
    if not cpu.available():
        sys.exit(f"fast CPU kernel unavailable: {cpu._build_error}")
    x = inputs(args.batch, args.dim, args.state, args.length)
    u, delta, A, B, C, D, z, bias = x

    def fast_fwd():
        return cpu.forward(u, delta, A, B, C, D, z, bias, True)

    ref_err = (fast_fwd() - selective_scan_ref(u, delta, A.double(), B, C, D, z, bias, True)).abs().max().item()

    def with_grad(fn):
        leaves = [t.detach().clone().requires_grad_() for t in x]
        grad = torch.randn(args.batch, args.dim, args.length)

        def run():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(grad)
        return run

    fast_fb = with_grad(lambda *t: cpu.selective_scan_cpu(*t[:6], z=t[6], delta_bias=t[7], delta_softplus=True))
    rows = []
    slow_repeats = max(2, args.repeats // 3)
    timings = {
        "fast forward": timeit(fast_fwd, args.repeats),
        "fast forward+backward": timeit(fast_fb, args.repeats),
        "mamba-style ref forward": timeit(lambda: mamba_style_ref(*x), slow_repeats, warmup=1),
        # autograd through 1569 steps of einsums takes tens of seconds: once is enough
        "mamba-style ref forward+backward": timeit(with_grad(mamba_style_ref), 1, warmup=0),
        "project ref forward": timeit(lambda: selective_scan_ref(u, delta, A, B, C, D, z, bias, True),
                                      slow_repeats, warmup=1),
    }
    for name, t in timings.items():
        rows.append({"implementation": name, **t})
    speedups = {
        "forward vs mamba-style ref": timings["mamba-style ref forward"]["median_ms"] / timings["fast forward"]["median_ms"],
        "forward+backward vs mamba-style ref": timings["mamba-style ref forward+backward"]["median_ms"]
        / timings["fast forward+backward"]["median_ms"],
        "forward vs project ref": timings["project ref forward"]["median_ms"] / timings["fast forward"]["median_ms"],
    }
    print_table(rows, ["implementation", "min_ms", "median_ms", "p90_ms", "runs"])
    print_table([{"speedup (median)": k, "x": v} for k, v in speedups.items()], ["speedup (median)", "x"])
    print(f"max |fast - float64 reference| = {ref_err:.2e}")
    save("scan_quick.json" if args.quick else "scan.json",
         {"shape": shape, "timings": timings, "speedups": speedups, "max_abs_error_vs_fp64_ref": ref_err})


if __name__ == "__main__":
    main()
