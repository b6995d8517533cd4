"""The GPU path, checked and timed on a CUDA device, against ceilings measured in the same run:

- ceilings: memory bandwidth (a device-to-device copy) and exp rate (an exp2-bound Triton kernel);
- the fused bidirectional selective scan (model.scan.triton) at B=8, L=1569, D=1152, N=16, bf16
  (VideoMamba-middle's mixer at 8 x 224 px): error against the torch reference, time against the
  reference, against mamba-ssm's selective_scan_fn called twice with flipped inputs (as the
  module does without our kernels), and against the floor max(bytes / bandwidth, exps / exp rate);
  also forward + backward against mamba-ssm's; a small sweep of launch shapes picks the best;
- the preprocessing kernel (video.gpu_preprocess) against the same torch ops on the GPU, 16
  frames of 1080p to 224 px;
- the whole `middle` forward in bf16 at 16 frames x 224 px, batch 1 and 8, with our kernels
  (STRETCHYSNAKE_SCAN=triton) against mamba-ssm's (STRETCHYSNAKE_SCAN=mamba_ssm).

Targets (H100): fused scan >= 1.5x faster than mamba-ssm's two calls and >= 60% of the floor;
middle forward >= 1.3x faster. Without mamba-ssm the comparisons say so and are skipped.

    python benchmarks/gpu.py                   # the shapes above -> results/gpu.json
    python benchmarks/gpu.py --quick           # smaller shapes, seconds -> results/gpu_quick.json
    python benchmarks/gpu.py --interpret-smoke # no GPU needed: the correctness checks at tiny shapes
                                               # in Triton's interpreter on the CPU (nothing saved)

Exits cleanly, saying so, on a machine without a CUDA device.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if "--interpret-smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede triton's first import

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import print_table, save, scan_shape_args  # noqa: E402

try:
    import triton
    import triton.testing
    import triton.language as tl
except ImportError:  # pragma: no cover - the CPU install without the dev/cuda extras
    triton = None

if triton is not None:
    @triton.jit
    def _exp_bound_kernel(x_ptr, out_ptr, n, ITERS: tl.constexpr, BLOCK: tl.constexpr):
        """ITERS * 4 exp2 per element on registers (four independent chains): the exp ceiling."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
        a, b, c, d = x, x + 0.25, x + 0.5, x + 0.75
        for _ in range(ITERS):
            a = tl.exp2(-a)
            b = tl.exp2(-b)
            c = tl.exp2(-c)
            d = tl.exp2(-d)
        tl.store(out_ptr + offs, a + b + c + d, mask=offs < n)


def rel_err(actual, expected) -> float:
    expected = expected.float()
    return ((actual.float() - expected).abs().max() / expected.abs().max()).item()


def bench(fn, warmup=10, rep=100) -> float:
    """Median milliseconds (CUDA events, L2 flushed between runs by triton's do_bench)."""
    return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")


def once_ms(fn) -> float:
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def mamba_scan():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        return selective_scan_fn
    except Exception as e:  # noqa: BLE001 - any failure means "not available"
        print(f"mamba-ssm is not importable here ({type(e).__name__}: {e}); its comparisons are skipped")
        return None


# ----------------------------------------------------------------------------- ceilings
def ceilings() -> dict:
    n = 1 << 28  # 1 GiB of fp32 each way
    src, dst = torch.empty(n, device="cuda"), torch.empty(n, device="cuda")
    copy_ms = bench(lambda: dst.copy_(src))
    bandwidth = 2 * n * 4 / (copy_ms / 1e3)
    elems, iters = 1 << 24, 64
    x = torch.rand(elems, device="cuda")
    out = torch.empty_like(x)
    ms = bench(lambda: _exp_bound_kernel[(triton.cdiv(elems, 1024),)](x, out, elems, ITERS=iters, BLOCK=1024))
    exp_rate = elems * iters * 4 / (ms / 1e3)
    print(f"ceilings: device copy {bandwidth / 1e12:.2f} TB/s, exp2 {exp_rate / 1e12:.2f} T/s")
    return {"bandwidth_bytes_per_s": bandwidth, "exp_per_s": exp_rate}


# ----------------------------------------------------------------------------- scan
def scan_inputs(batch, length, dim, state, dtype, seed=0):
    """The model's layout: u, delta, z (batch, L, D) memory seen as (batch, D, L); B and C views
    of one x_proj output (batch, L, R + 2N)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    rank = -(-dim // 32)

    def direction():
        u = torch.randn(batch, length, dim, device="cuda", generator=g).to(dtype).transpose(1, 2)
        delta = (torch.randn(batch, length, dim, device="cuda", generator=g) * 0.5).to(dtype).transpose(1, 2)
        xproj = torch.randn(batch, length, rank + 2 * state, device="cuda", generator=g).to(dtype)
        b_mat, c_mat = xproj[..., rank:rank + state].transpose(1, 2), xproj[..., rank + state:].transpose(1, 2)
        A = -torch.exp(torch.rand(dim, state, device="cuda", generator=g) * 3)
        D = torch.randn(dim, device="cuda", generator=g)
        bias = torch.randn(dim, device="cuda", generator=g) * 0.5 - 3
        return [u, delta, A, b_mat, c_mat, D, bias]

    z = torch.randn(batch, length, dim, device="cuda", generator=g).to(dtype).transpose(1, 2)
    return direction(), direction(), z


def mamba_two_calls(fn, fwd, bwd, z):
    """What the module does without our kernels: two selective_scan_fn calls, the backward one
    on flipped copies, its output flipped back and added."""
    u, delta, A, B, C, D, bias = fwd
    y = fn(u, delta, A, B, C, D, z, bias, delta_softplus=True)
    u, delta, A, B, C, D, bias = bwd
    flip = [t.flip(-1) for t in (u, delta, B, C, z)]
    y_b = fn(flip[0], flip[1], A, flip[2], flip[3], D, flip[4], bias, delta_softplus=True)
    return y + y_b.flip(-1)


def bench_scan(args, ceil: dict, ts) -> dict:
    from model.scan.reference import bidirectional_scan_ref
    batch, length, dim, state = args.batch, args.length, args.dim, args.state
    fwd, bwd, z = scan_inputs(batch, length, dim, state, torch.bfloat16)
    print(f"\nbidirectional scan: B={batch} L={length} D={dim} N={state}, bf16 in the model's layout")
    fused = lambda: ts.bidirectional_scan(*fwd, *bwd, z)  # noqa: E731
    out = fused()
    ref = bidirectional_scan_ref(*[t.float() for t in fwd], *[t.float() for t in bwd], z.float())
    result = {"shape": dict(batch=batch, L=length, D=dim, N=state, dtype="bf16"),
              "max_rel_err_vs_reference": rel_err(out, ref)}
    perm = torch.randperm(length)
    ref_perm = bidirectional_scan_ref(*[t.float() for t in fwd], *[t.float() for t in bwd], z.float(), perm)
    result["max_rel_err_vs_reference_permuted_order"] = rel_err(ts.bidirectional_scan(*fwd, *bwd, z, perm), ref_perm)

    sweep = []
    best = None
    auto = ts._fwd_config(batch, dim, torch.device("cuda"))
    for block_d, warps, group in ((32, 1, 8), (32, 1, 16), (64, 2, 8), (16, 1, 16), (16, 1, 8), (8, 1, 16), (4, 1, 16)):
        ts.FWD.update(block_d=block_d, num_warps=warps, group=group)
        try:
            ms = bench(fused, rep=50)
        except Exception as e:  # noqa: BLE001 - a shape the compiler rejects is just skipped
            print(f"  block_d={block_d} warps={warps} group={group}: {type(e).__name__}: {e}")
            continue
        sweep.append({"block_d": block_d, "num_warps": warps, "group": group, "ms": ms,
                      "heuristic": (block_d, 1 if block_d <= 32 else warps, group) == auto})
        if best is None or ms < best["ms"]:
            best = sweep[-1]
    ts.FWD.update(block_d=None, num_warps=1, group=None)  # back to the per-call heuristic
    print_table(sweep, ["block_d", "num_warps", "group", "ms", "heuristic"],
                f"launch shapes (fused forward; the heuristic picks block_d={auto[0]}, group={auto[2]})")
    result["sweep"], result["best_launch"], result["heuristic_launch"] = sweep, best, list(auto)
    result["heuristic_vs_best"] = next((r["ms"] for r in sweep if r["heuristic"]), float("nan")) / best["ms"]
    fused_ms = bench(fused)

    elems, bc = batch * length * dim, batch * length * state
    bytes_moved = 2 * (6 * elems + 4 * bc)  # read u, delta x 2 directions and z, write out; B, C x 2
    exps = 2 * elems * state
    floor_ms = max(bytes_moved / ceil["bandwidth_bytes_per_s"], exps / ceil["exp_per_s"]) * 1e3
    rows = [{"implementation": "fused Triton (ours)", "ms": fused_ms}]
    result.update(fused_ms=fused_ms, floor_ms=floor_ms, fraction_of_floor=floor_ms / fused_ms,
                  bytes=bytes_moved, exps=exps,
                  achieved_bandwidth_bytes_per_s=bytes_moved / (fused_ms / 1e3),
                  achieved_exp_per_s=exps / (fused_ms / 1e3))
    ref_ms = once_ms(lambda: bidirectional_scan_ref(*fwd, *bwd, z))
    rows.append({"implementation": "torch reference (one run)", "ms": ref_ms})
    result["reference_ms"] = ref_ms

    fn = mamba_scan()
    if fn is not None:
        two = lambda: mamba_two_calls(fn, fwd, bwd, z)  # noqa: E731
        result["mamba_max_rel_err_vs_reference"] = rel_err(two(), ref)
        flipped = [t.flip(-1).contiguous() if t.dim() == 3 else t for t in bwd]
        zf = z.flip(-1).contiguous()
        kernels_only = lambda: (fn(*fwd[:5], fwd[5], z, fwd[6], delta_softplus=True),  # noqa: E731
                                fn(*flipped[:5], flipped[5], zf, flipped[6], delta_softplus=True))
        result["mamba_two_calls_ms"] = bench(two)
        result["mamba_two_kernel_calls_only_ms"] = bench(kernels_only)
        result["speedup_vs_mamba_two_calls"] = result["mamba_two_calls_ms"] / fused_ms
        result["speedup_vs_mamba_kernels_only"] = result["mamba_two_kernel_calls_only_ms"] / fused_ms
        rows += [{"implementation": "mamba-ssm x2, flipped inputs", "ms": result["mamba_two_calls_ms"]},
                 {"implementation": "mamba-ssm x2, kernels only", "ms": result["mamba_two_kernel_calls_only_ms"]}]

    # forward + backward (training): ours (recompute backward) against mamba-ssm's
    leaves = [t.detach().clone().requires_grad_() for t in (*fwd, *bwd, z)]
    grad = torch.randn_like(out)

    def train_step(run):
        def step():
            for t in leaves:
                t.grad = None
            run().backward(grad)
        return step

    result["fused_fwd_bwd_ms"] = bench(train_step(lambda: ts.bidirectional_scan(*leaves)), rep=50)
    rows.append({"implementation": "fused Triton fwd+bwd", "ms": result["fused_fwd_bwd_ms"]})
    if fn is not None:
        result["mamba_fwd_bwd_ms"] = bench(train_step(lambda: mamba_two_calls(fn, leaves[:7], leaves[7:14], leaves[14])),
                                           rep=50)
        rows.append({"implementation": "mamba-ssm x2 fwd+bwd", "ms": result["mamba_fwd_bwd_ms"]})
    print_table(rows, ["implementation", "ms"], "bidirectional scan")
    print(f"floor {floor_ms:.3f} ms = max({bytes_moved / 1e6:.0f} MB / bandwidth, {exps / 1e6:.0f} M exps / exp rate); "
          f"fused at {100 * floor_ms / fused_ms:.0f}% of it; "
          f"{result['achieved_bandwidth_bytes_per_s'] / 1e12:.2f} TB/s, {result['achieved_exp_per_s'] / 1e12:.2f} T exp/s; "
          f"max rel. error {result['max_rel_err_vs_reference']:.2e} (permuted order {result['max_rel_err_vs_reference_permuted_order']:.2e})")
    return result


# ----------------------------------------------------------------------------- preprocessing
def bench_preprocess(args) -> dict:
    from video.gpu_preprocess import preprocess_triton
    from video.transforms import center_crop, preprocess, resize_short_side
    frames_cpu = torch.randint(0, 256, (args.frames, args.height, args.width, 3), dtype=torch.uint8)
    frames = frames_cpu.cuda()
    pixels = args.pixels
    mean = torch.tensor((0.485, 0.456, 0.406), device="cuda").view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225), device="cuda").view(1, 3, 1, 1)

    def torch_path():  # video.transforms' ops, on the GPU
        video = resize_short_side(frames.permute(0, 3, 1, 2).float(), pixels)
        video = center_crop(video, pixels)
        return ((video * (1.0 / (255.0 * std)) - mean / std).permute(1, 0, 2, 3).contiguous())

    out = preprocess_triton(frames, pixels)
    result = {"frames": list(frames.shape), "pixels": pixels,
              "max_abs_err_vs_cpu_path": (out.cpu() - preprocess(frames_cpu.numpy(), pixels)).abs().max().item(),
              "max_abs_err_vs_torch_gpu": (out - torch_path()).abs().max().item(),
              "triton_ms": bench(lambda: preprocess_triton(frames, pixels)),
              "triton_bf16_ms": bench(lambda: preprocess_triton(frames, pixels, dtype=torch.bfloat16)),
              "torch_ms": bench(torch_path)}
    result["speedup"] = result["torch_ms"] / result["triton_ms"]
    print_table([{"path": "Triton kernel", "ms": result["triton_ms"]},
                 {"path": "Triton kernel, bf16 out", "ms": result["triton_bf16_ms"]},
                 {"path": "torch ops on the GPU", "ms": result["torch_ms"]}], ["path", "ms"],
                f"\npreprocess {tuple(frames.shape)} uint8 -> (3, {args.frames}, {pixels}, {pixels})")
    print(f"max |kernel - CPU path| = {result['max_abs_err_vs_cpu_path']:.2e}")
    return result


# ----------------------------------------------------------------------------- whole forward
def bench_forward(args) -> dict:
    from model import build_model
    from model.scan import ENV, _mamba_ssm_fn
    net = build_model("middle", num_classes=400).cuda().to(torch.bfloat16).eval()
    backends = ["triton"] + (["mamba_ssm"] if _mamba_ssm_fn() is not None else [])
    rows = []
    result = {"frames": args.model_frames, "pixels": 224, "dtype": "bf16", "rows": rows}
    before = os.environ.get(ENV)
    try:
        for batch in args.model_batches:
            video = torch.randn(batch, 3, args.model_frames, 224, 224, device="cuda", dtype=torch.bfloat16)
            logits = {}
            for backend in backends:
                os.environ[ENV] = backend
                with torch.inference_mode():
                    logits[backend] = net(video).float()
                    ms = bench(lambda: net(video), warmup=3, rep=max(20, 200 // batch))
                rows.append({"batch": batch, "backend": backend, "ms": ms})
            if len(logits) == 2:
                rows[-2]["speedup_vs_mamba_ssm"] = rows[-1]["ms"] / rows[-2]["ms"]
                rows[-2]["max_rel_diff_logits"] = rel_err(logits["triton"], logits["mamba_ssm"])
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
    print_table(rows, ["batch", "backend", "ms", "speedup_vs_mamba_ssm", "max_rel_diff_logits"],
                f"\nmiddle forward, bf16, {args.model_frames} frames x 224 px")
    return result


# ----------------------------------------------------------------------------- interpreter smoke
def interpret_smoke() -> int:
    """Correctness only, tiny shapes, CPU tensors through Triton's interpreter."""
    from model.scan import triton as ts
    from model.scan.reference import bidirectional_scan_ref, selective_scan_ref
    from video.gpu_preprocess import preprocess_triton
    from video.transforms import preprocess
    g = torch.Generator().manual_seed(0)
    b, d, n, length = 2, 24, 16, 12

    def direction():
        return [torch.randn(b, length, d, generator=g).transpose(1, 2), torch.randn(b, length, d, generator=g).transpose(1, 2) * 0.5,
                -torch.rand(d, n, generator=g) * 3 - 0.05, torch.randn(b, n, length, generator=g),
                torch.randn(b, n, length, generator=g), torch.randn(d, generator=g), torch.randn(d, generator=g) * 0.5]

    fwd, bwd = direction(), direction()
    z = torch.randn(b, length, d, generator=g).transpose(1, 2)
    checks = {
        "scan": rel_err(ts.selective_scan_triton(*fwd[:6], z, fwd[6], True),
                        selective_scan_ref(*[t.double() for t in fwd[:6]], z.double(), fwd[6].double(), True)),
        "bidirectional, reversed": rel_err(ts.bidirectional_scan(*fwd, *bwd, z),
                                           bidirectional_scan_ref(*[t.double() for t in (*fwd, *bwd, z)])),
    }
    perm = torch.randperm(length, generator=g)
    checks["bidirectional, permutation"] = rel_err(ts.bidirectional_scan(*fwd, *bwd, z, perm),
                                                   bidirectional_scan_ref(*[t.double() for t in (*fwd, *bwd, z)], perm))
    frames = torch.randint(0, 256, (2, 30, 41, 3), dtype=torch.uint8, generator=g)
    checks["preprocess (abs)"] = (preprocess_triton(frames, 12) - preprocess(frames.numpy(), 12)).abs().max().item()
    print_table([{"check": k, "max error": v} for k, v in checks.items()], ["check", "max error"],
                "Triton interpreter smoke test (CPU, tiny shapes; errors relative to max |reference| unless abs)")
    ok = all(v < 1e-4 for v in checks.values())
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="B=2, L=400, D=384; middle at batch 1, 8 frames")
    ap.add_argument("--interpret-smoke", action="store_true", help="no GPU: correctness at tiny shapes, interpreted")
    scan_shape_args(ap, batch=8, dim=1152)
    ap.add_argument("--skip-model", action="store_true", help="kernels only, no whole-model forward")
    args = ap.parse_args()
    if triton is None:
        print("triton is not installed (pip install -e '.[dev]' or '.[cuda]'); nothing to measure")
        return 0
    if args.interpret_smoke:
        return interpret_smoke()
    if not torch.cuda.is_available():
        print("no CUDA device: benchmarks/gpu.py measures the Triton kernels on a GPU, so there is nothing to "
              "time here (python benchmarks/gpu.py --interpret-smoke runs its correctness checks on the CPU)")
        return 0
    args.frames, args.height, args.width, args.pixels = 16, 1080, 1920, 224
    args.model_frames, args.model_batches = 16, (1, 8)
    if args.quick:
        args.batch, args.length, args.dim = 2, 400, 384
        args.frames, args.model_frames, args.model_batches = 4, 8, (1,)
    from model.scan import triton as ts
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    ceil = ceilings()
    results = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "ceilings": ceil,
               "scan": bench_scan(args, ceil, ts), "preprocess": bench_preprocess(args)}
    if not args.skip_model:
        results["middle_forward"] = bench_forward(args)
    scan_res = results["scan"]
    targets = {"fused scan >= 60% of the floor": scan_res["fraction_of_floor"] >= 0.6}
    if "speedup_vs_mamba_two_calls" in scan_res:
        targets["fused scan >= 1.5x mamba-ssm two calls"] = scan_res["speedup_vs_mamba_two_calls"] >= 1.5
    for row in results.get("middle_forward", {}).get("rows", []):
        if "speedup_vs_mamba_ssm" in row:
            targets[f"middle forward batch {row['batch']} >= 1.3x mamba-ssm"] = row["speedup_vs_mamba_ssm"] >= 1.3
    results["targets"] = targets
    print_table([{"target": k, "met": v} for k, v in targets.items()], ["target", "met"], "\ntargets")
    save("gpu_quick.json" if args.quick else "gpu.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
