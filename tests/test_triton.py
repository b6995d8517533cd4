"""The Triton kernels against their torch references, on fresh random inputs: the selective scan
(forward, last state, recompute backward), the fused bidirectional scan (reverse order and a
permutation), the conv1d + SiLU pair, a whole small model with STRETCHYSNAKE_SCAN=triton, and
the frame preprocessing kernel against video.transforms.preprocess.

Without CUDA the kernels run in Triton's interpreter on CPU tensors, at tiny shapes. The
interpreter must be switched on before triton is first imported, so this module sets
TRITON_INTERPRET=1 at the top; if triton was already imported without it in this process (by
another test module), the whole file re-runs itself in a fresh process instead. With CUDA the
same tests run compiled on the GPU, plus real-shape ones. Every kernel is also compiled for
sm_90 here (Triton's full pipeline to a cubin, no device needed): what the interpreter cannot see.

Tolerances, on max |error| relative to max |reference| (float64 reference on the same inputs):
fp32 1e-5 (forward and every gradient); bf16 inputs 2e-2 and fp16 4e-3 (the output's rounding,
twice in the bidirectional op: the backward direction's partial is stored in the output dtype).
Preprocessing: 1e-4 absolute for fp32 output against the CPU path (torch's two-pass filter;
values are O(1)), bf16 output within its rounding (2e-2 absolute).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernel modules import triton
# kernels usable in this process: compiled on a GPU, or interpreted from triton's first import
IN_PROCESS = CUDA or os.environ.get("TRITON_INTERPRET") == "1"

triton = pytest.importorskip("triton")

from model import VideoMambaConfig, build_model  # noqa: E402
from model import scan  # noqa: E402
from model.scan import pick_backend, selective_scan  # noqa: E402
from model.scan.reference import bidirectional_scan_ref, selective_scan_ref  # noqa: E402

from conftest import draw_seed  # noqa: E402

if IN_PROCESS:
    from model.scan import triton as ts  # noqa: E402
    from video.gpu_preprocess import preprocess_triton  # noqa: E402
    from video.transforms import preprocess  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"
kernels = pytest.mark.skipif(not IN_PROCESS, reason="triton was imported without the interpreter: "
                                                    "checked in a fresh process (test_in_fresh_process)")
cuda_only = pytest.mark.skipif(not CUDA, reason="real shapes need a CUDA device")
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def rel_err(actual, expected) -> float:
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-30)).item()


def scan_inputs(batch, dim, state, length, *, channel_contiguous=True, seed=None):
    g = torch.Generator().manual_seed(seed if seed is not None else draw_seed())

    def seq(scale=1.0):
        if channel_contiguous:  # the model's layout: (batch, L, D) memory seen as (batch, D, L)
            return torch.randn(batch, length, dim, generator=g, dtype=torch.float64).transpose(1, 2) * scale
        return torch.randn(batch, dim, length, generator=g, dtype=torch.float64) * scale

    x = dict(u=seq(), delta=seq(0.5), A=-torch.rand(dim, state, generator=g, dtype=torch.float64) * 3 - 0.05,
             B=torch.randn(batch, state, length, generator=g, dtype=torch.float64),
             C=torch.randn(batch, state, length, generator=g, dtype=torch.float64),
             D=torch.randn(dim, generator=g, dtype=torch.float64), z=seq(),
             delta_bias=torch.randn(dim, generator=g, dtype=torch.float64) * 0.5)
    return {k: v.to(DEVICE) for k, v in x.items()}


def lowered(x: dict, dtype) -> dict:
    """The model's mix: sequences in `dtype`, A, D and the bias in fp32."""
    return {k: (v.to(dtype) if k in ("u", "delta", "z", "B", "C") else v.float()) if v is not None else None
            for k, v in x.items()}


# ----------------------------------------------------------------------------- selective scan
@kernels
@pytest.mark.parametrize("use_z,use_d,softplus,contiguous", [
    (True, True, True, True), (False, True, True, False), (True, False, True, True), (False, False, False, True),
])
def test_scan_forward_matches_reference(use_z, use_d, softplus, contiguous):
    x = scan_inputs(2, 24, 16, 11, channel_contiguous=contiguous)
    if not use_z:
        x["z"] = None
    if not use_d:
        x["D"] = x["delta_bias"] = None
    if not softplus:  # a raw delta must be positive for a decaying scan
        x["delta"] = x["delta"].abs()
    ref, ref_state = selective_scan_ref(**x, delta_softplus=softplus, return_last_state=True)
    out, state = ts.selective_scan_triton(**lowered(x, torch.float32), delta_softplus=softplus,
                                          return_last_state=True)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert rel_err(out, ref) <= TOL[torch.float32]
    assert rel_err(state, ref_state) <= TOL[torch.float32]


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_scan_half_precision_inputs(dtype):
    low = lowered(scan_inputs(2, 20, 16, 9), dtype)
    out = ts.selective_scan_triton(**low, delta_softplus=True)
    ref = selective_scan_ref(**{k: v.double() for k, v in low.items()}, delta_softplus=True)
    assert out.dtype == dtype
    assert rel_err(out, ref) <= TOL[dtype]


@kernels
@pytest.mark.parametrize("full", [True, False])
def test_scan_gradients_match_reference(full):
    """The recompute backward (chunked: 9 tokens span two interpreter chunks) against autograd
    through the float64 reference, every input."""
    x = scan_inputs(2, 20, 5, 9)  # N=5: a padded state block
    if not full:
        x["z"] = x["D"] = x["delta_bias"] = None
        x["delta"] = x["delta"].abs()
    ref_in = {k: v.clone().requires_grad_() if v is not None else None for k, v in x.items()}
    fast_in = {k: v.float().requires_grad_() if v is not None else None for k, v in x.items()}
    ref = selective_scan_ref(**ref_in, delta_softplus=full)
    out = ts.selective_scan_triton(**fast_in, delta_softplus=full)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad.float())
    for k, v in fast_in.items():
        if v is not None:
            assert rel_err(v.grad, ref_in[k].grad) <= TOL[torch.float32], k


@kernels
def test_dispatch_routes_to_triton(monkeypatch):
    x = lowered(scan_inputs(1, 16, 16, 7), torch.float32)
    monkeypatch.setenv(scan.ENV, "triton")
    assert pick_backend(x["u"]) == "triton"
    out = selective_scan(**x, delta_softplus=True)
    assert rel_err(out, selective_scan_ref(**x, delta_softplus=True)) <= TOL[torch.float32]
    grouped = dict(x, B=x["B"][:, None], C=x["C"][:, None])  # not the kernel's form: the reference
    assert rel_err(selective_scan(**grouped, delta_softplus=True), out) <= TOL[torch.float32]


# ----------------------------------------------------------------------------- bidirectional
def bidir_inputs(batch, dim, state, length, dtype=torch.float64):
    f, b = scan_inputs(batch, dim, state, length), scan_inputs(batch, dim, state, length)
    names = ("u", "delta", "A", "B", "C", "D", "delta_bias")
    args = [f[k] for k in names] + [b[k] for k in names] + [f["z"]]
    if dtype != torch.float64:
        args = [a.to(dtype) if a.dim() == 3 else a.float() for a in args]
    return args


ORDERS = {"reverse": None, "explicit reverse": "rev", "permutation": "perm"}


def make_order(kind, length):
    if kind is None:
        return None
    return torch.arange(length - 1, -1, -1) if kind == "rev" else torch.randperm(length)


@kernels
@pytest.mark.parametrize("order", list(ORDERS.values()), ids=list(ORDERS))
def test_bidirectional_forward(order):
    args = bidir_inputs(2, 24, 16, 13)
    order = make_order(order, 13)
    ref = bidirectional_scan_ref(*args, order=order)
    out = ts.bidirectional_scan(*[a.float() for a in args], order=order)
    assert rel_err(out, ref) <= TOL[torch.float32]


@kernels
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bidirectional_half_precision(dtype):
    args = bidir_inputs(1, 20, 16, 10, dtype)
    order = torch.randperm(10)
    out = ts.bidirectional_scan(*args, order=order)
    assert out.dtype == dtype
    assert rel_err(out, bidirectional_scan_ref(*[a.double() for a in args], order=order)) <= TOL[dtype]


@kernels
@pytest.mark.parametrize("order", [None, "perm"], ids=["reverse", "permutation"])
def test_bidirectional_gradients(order):
    args = bidir_inputs(1, 16, 4, 10)
    order = make_order(order, 10)
    ref_in = [a.clone().requires_grad_() for a in args]
    fast_in = [a.float().requires_grad_() for a in args]
    ref = bidirectional_scan_ref(*ref_in, order=order)
    out = ts.bidirectional_scan(*fast_in, order=order)
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad.float())
    for i, (a, r) in enumerate(zip(fast_in, ref_in)):
        assert rel_err(a.grad, r.grad) <= TOL[torch.float32], i


@kernels
def test_order_must_be_a_permutation():
    args = [a.float() for a in bidir_inputs(1, 16, 4, 6)]
    with pytest.raises(ValueError, match="permutation"):
        ts.bidirectional_scan(*args, order=torch.tensor([0, 1, 1, 2, 3, 4]))


@kernels
@pytest.mark.parametrize("order", [None, "perm"], ids=["reverse", "permutation"])
def test_conv_silu_pair(order, fresh_seed):
    g = torch.Generator().manual_seed(fresh_seed)
    x = torch.randn(2, 11, 20, generator=g, dtype=torch.float64)
    weights = [torch.randn(20, 1, 4, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64),
               torch.randn(20, 1, 4, generator=g, dtype=torch.float64), torch.randn(20, generator=g, dtype=torch.float64)]
    order = make_order(order, 11)
    ref_in = [t.to(DEVICE).requires_grad_() for t in (x, *weights)]
    fast_in = [t.detach().float().requires_grad_() for t in ref_in]
    ref = ts._conv_pair_torch(*ref_in, order)
    out = ts.conv_silu_pair(*fast_in, order)
    for o, r in zip(out, ref):
        assert rel_err(o, r) <= TOL[torch.float32]
    grads = [torch.randn_like(r) for r in ref]
    torch.autograd.backward(ref, grads)
    torch.autograd.backward(out, [gr.float() for gr in grads])
    for a, r in zip(fast_in, ref_in):
        assert rel_err(a.grad, r.grad) <= TOL[torch.float32]


# ----------------------------------------------------------------------------- whole model
TINY = dict(embed_dim=16, depth=1, img_size=32, patch_size=8, num_frames=2, num_classes=3)


@kernels
@pytest.mark.parametrize("order", ["reverse", "reverse_frames"])
def test_model_with_triton_backend_matches_reference(order, monkeypatch):
    """STRETCHYSNAKE_SCAN=triton sends the mixer down the fused path (conv pair + one
    bidirectional scan); logits and every parameter gradient match the reference backend."""
    torch.manual_seed(0)
    net = build_model(VideoMambaConfig(**TINY, backward_order=order)).to(DEVICE)
    video = torch.randn(2, 3, 2, 16, 24, device=DEVICE)
    monkeypatch.setenv(scan.ENV, "reference")
    ref = net(video, patch=8)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    net.zero_grad()
    calls = []
    real = ts.bidirectional_scan
    monkeypatch.setattr(ts, "bidirectional_scan", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setenv(scan.ENV, "triton")
    out = net(video, patch=8)
    assert calls, "the fused Triton path was not taken"
    assert rel_err(out, ref) <= 1e-4
    out.sum().backward()
    for name, p in net.named_parameters():
        if name in ref_grads:
            assert rel_err(p.grad, ref_grads[name]) <= 1e-4, name


# ----------------------------------------------------------------------------- preprocessing
@kernels
@pytest.mark.parametrize("shape,pixels", [
    ((2, 10, 13), 16),  # upscale
    ((2, 40, 30), 12),  # downscale, antialiased
    ((1, 33, 47), 15),  # odd, non-square, landscape
    ((1, 20, 31), 20),  # short side already the size: crop only
], ids=["upscale", "downscale", "odd", "crop-only"])
def test_preprocess_kernel_matches_cpu_path(shape, pixels):
    frames = torch.randint(0, 256, (*shape, 3), dtype=torch.uint8)
    expected = preprocess(frames.numpy(), pixels)
    out = preprocess_triton(frames.to(DEVICE), pixels)
    assert out.shape == expected.shape == (3, shape[0], pixels, pixels) and out.dtype == torch.float32
    assert (out.cpu() - expected).abs().max().item() <= 1e-4
    low = preprocess_triton(frames.to(DEVICE), pixels, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    assert (low.cpu().float() - expected).abs().max().item() <= 2e-2


# ----------------------------------------------------------------------------- real shapes (GPU)
@cuda_only
def test_real_shape_bidirectional_scan_bf16():
    args = bidir_inputs(2, 384, 16, 1569, torch.bfloat16)
    order = torch.randperm(1569)
    for o in (None, order):
        out = ts.bidirectional_scan(*args, order=o)
        ref = bidirectional_scan_ref(*[a.float() for a in args], order=o)
        assert rel_err(out, ref) <= TOL[torch.bfloat16]


@cuda_only
def test_real_shape_scan_gradients():
    x = scan_inputs(2, 192, 16, 1569)
    ref_in = {k: v.float().requires_grad_() for k, v in x.items()}
    fast_in = {k: v.float().requires_grad_() for k, v in x.items()}
    ref = selective_scan_ref(**ref_in, delta_softplus=True)
    out = ts.selective_scan_triton(**fast_in, delta_softplus=True)
    assert rel_err(out, ref) <= 1e-4
    grad = torch.randn_like(ref)
    ref.backward(grad)
    out.backward(grad)
    for k, v in fast_in.items():
        assert rel_err(v.grad, ref_in[k].grad) <= 1e-3, k  # fp32 against fp32, 1569 steps


@cuda_only
def test_real_shape_preprocess_dispatch():
    frames = torch.randint(0, 256, (8, 1080, 1920, 3), dtype=torch.uint8)
    expected = preprocess(frames.numpy(), 224)
    out = preprocess(frames.cuda(), 224)  # dispatches to the kernel
    assert out.is_cuda and (out.cpu() - expected).abs().max().item() <= 1e-4


@cuda_only
def test_real_shape_model_forward(monkeypatch):
    net = build_model("tiny", num_classes=10).cuda().eval()
    video = torch.randn(2, 3, 8, 224, 224, device="cuda")
    with torch.no_grad():
        fused = net(video)
        monkeypatch.setenv(scan.ENV, "reference")
        ref = net(video)
    assert rel_err(fused, ref) <= 1e-3


# ----------------------------------------------------------------------------- GPU compile
COMPILE_FOR_SM90 = '''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from model.scan import triton as ts
from video import gpu_preprocess as gp


def build(kernel, types, constexprs, num_warps=1):
    nospec = set(kernel.do_not_specialize or ())
    sig, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        sig[name] = types.get(name, "*fp32" if name.endswith("_ptr") else "i32")
        if sig[name].startswith("*") and name not in nospec:
            attrs[(i,)] = [["tt.divisibility", 16]]
    triton.compile(ASTSource(kernel, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                   options={"num_warps": num_warps})


bf = "*bf16"
flags = dict(HAS_D=True, HAS_BIAS=True, SOFTPLUS=True, HAS_Z=True, BLOCK_N=16)
build(ts._scan_fwd_kernel, dict(u_ptr=bf, dl_ptr=bf, z_ptr=bf, out_ptr=bf), dict(flags, N=16, STORE_STATE=True, BLOCK_D=32, GROUP=8))
for order, block in ((1, 16), (2, 32)):
    build(ts._bidir_fwd_kernel, dict(uf_ptr=bf, dlf_ptr=bf, ub_ptr=bf, dlb_ptr=bf, z_ptr=bf, out_ptr=bf, order_ptr="*i64"),
          dict(flags, N=16, ORDER_B=order, BLOCK_D=block, GROUP=16))
build(ts._scan_bwd_kernel, dict(u_ptr=bf, dl_ptr=bf, b_ptr=bf, c_ptr=bf, z_ptr=bf, order_ptr="*i64"),
      dict(flags, ORDER=2, BLOCK_D=32, CHUNK=64))
build(ts._conv_silu_pair_kernel, dict(x_ptr=bf, out_ptr=bf, order_ptr="*i64"),
      dict(K=4, ORDER_B=2, HAS_BIAS=True, BLOCK_L=32, BLOCK_D=64), num_warps=4)
floats = "scale_y support_y inv_y scale_x support_x inv_x mul0 mul1 mul2 sub0 sub1 sub2".split()
build(gp._preprocess_kernel, dict(src_ptr="*u8", **{n: "fp32" for n in floats}), dict(BLOCK_H=16, BLOCK_W=32), num_warps=4)
print("compiled")
'''


@kernels
def test_kernels_compile_for_sm90_without_a_gpu():
    """The interpreter checks semantics but not what only the compiler sees (types, layouts,
    PTX): every kernel goes through Triton's full pipeline to an sm_90 cubin (the bundled
    ptxas; no device needed), in a process without the interpreter."""
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0 and "ptxas" in proc.stderr and "not found" in proc.stderr.lower():
        pytest.skip("this triton has no ptxas")
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-4000:]


# ----------------------------------------------------------------------------- fresh process
@pytest.mark.skipif(IN_PROCESS, reason="the kernels run in this process")
def test_in_fresh_process():
    """triton was imported before this module could switch its interpreter on: run the file again
    where it can."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__))],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
