"""Fast CPU selective scan: the C kernels in cpu_kernel.c, built on first use with the system C
compiler into a per-user cache (like a JIT: no build step at install time, no torch headers),
called through ctypes with as many OpenMP threads as torch uses, with a backward pass for
training. Also the causal conv1d + SiLU that the fused inference mixer uses.

available() says whether the kernel could be built; dispatch (model.scan) falls back to the
reference when it cannot.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

LANES = 16  # W in cpu_kernel.c
MAX_STATE = 64  # MAXN in cpu_kernel.c
SOURCE = Path(__file__).with_name("cpu_kernel.c")
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fPIC", "-shared", "-std=c11",
          "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
# libgomp.so.1 is the soname torch's own OpenMP runtime is loaded under, so the kernels join
# torch's thread pool (two pools spin against each other on a small machine).
OPENMP = ["-fopenmp"]

# Pointers as plain addresses (c_void_p; the C side reads float* / int64_t*): a tensor's
# data_ptr() goes in as it is, without a ctypes.cast per pointer (a fifth of the Python time of
# a small forward went to building these structs).
_f = ctypes.c_void_p
_i = ctypes.c_int64


class ScanArgs(ctypes.Structure):
    """Mirror of the C struct ScanArgs (same field order)."""
    _fields_ = [
        ("batch", _i), ("L", _i), ("D", _i), ("N", _i),
        ("u", _f), ("u_sb", _i), ("u_sl", _i),
        ("delta", _f), ("dl_sb", _i), ("dl_sl", _i),
        ("A", _f),
        ("Bm", _f), ("B_sb", _i), ("B_sl", _i), ("B_sn", _i),
        ("Cm", _f), ("C_sb", _i), ("C_sl", _i), ("C_sn", _i),
        ("Dv", _f),
        ("z", _f), ("z_sb", _i), ("z_sl", _i),
        ("dbias", _f),
        ("softplus", _i),
        ("out", _f), ("o_sb", _i), ("o_sl", _i),
        ("last_state", _f),
        ("order", _f), ("accumulate", _i),
        ("dout", _f), ("g_sb", _i), ("g_sl", _i),
        ("du", _f), ("ddelta", _f), ("dz", _f),
        ("dA", _f), ("dD", _f), ("ddbias", _f),
        ("dB", _f), ("dC", _f),
        ("scratch", _f),
    ]


class ConvArgs(ctypes.Structure):
    _fields_ = [
        ("batch", _i), ("L", _i), ("D", _i), ("K", _i),
        ("x", _f), ("x_sb", _i), ("x_sl", _i),
        ("w", _f), ("bias", _f), ("order", _f), ("out", _f),
        ("dout", _f), ("dx", _f), ("dw", _f), ("db", _f),
    ]


_lock = threading.Lock()
_lib = None
_build_error: str | None = None


def _cache_dir() -> Path:
    root = os.environ.get("STRETCHYSNAKE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "stretchysnake")
    return Path(root)


def _cpu_signature() -> str:
    """-march=native code must not be reused on another CPU (shared home directories)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _build(extra_flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """Compile (or reuse from the cache) and load the kernels; extra_flags lets the tests build
    the portable code path too (e.g. -mno-avx512f)."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    source = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    cflags = CFLAGS + list(extra_flags)
    key = hashlib.sha256(source + " ".join(cflags + OPENMP).encode() + version.encode() + _cpu_signature().encode())
    target = _cache_dir() / f"selective_scan_{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            errors = []
            for flags in (cflags + OPENMP, cflags):  # a compiler without OpenMP: one thread
                proc = subprocess.run([cc, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
                if proc.returncode == 0:
                    break
                errors.append(proc.stderr[-2000:])
            else:
                raise RuntimeError(f"{cc} failed:\n" + "\n".join(errors))
            os.replace(tmp, target)  # atomic: concurrent builders each publish a whole file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    for fn, args in ((lib.ss_forward, ScanArgs), (lib.ss_backward, ScanArgs), (lib.conv_silu_forward, ConvArgs),
                     (lib.conv_silu_backward, ConvArgs)):
        fn.argtypes = [ctypes.POINTER(args), ctypes.c_int]
        fn.restype = ctypes.c_int
    return lib


def library() -> ctypes.CDLL:
    global _lib, _build_error
    if _lib is None:
        with _lock:
            if _lib is None and _build_error is None:
                try:
                    _lib = _build()
                except Exception as exc:  # no compiler, read-only cache, ...: report, fall back
                    _build_error = f"{type(exc).__name__}: {exc}"
            if _lib is None:
                raise RuntimeError(f"the fast CPU scan kernel is unavailable: {_build_error}")
    return _lib


def available() -> bool:
    try:
        library()
        return True
    except RuntimeError:
        return False


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _lanes_contiguous(t: torch.Tensor) -> torch.Tensor:
    """(batch, D, L) float32 whose channel axis has stride 1 (free for the model's layout)."""
    t = t.float()
    if t.stride(1) != 1 and t.shape[1] > 1:
        t = t.transpose(1, 2).contiguous().transpose(1, 2)
    return t


def _run(fn, args, items: int) -> int:
    threads = max(1, min(torch.get_num_threads(), items))
    if fn(ctypes.byref(args), threads) != 0:
        raise ValueError(f"d_state above {MAX_STATE} (or a conv kernel above 16) is not supported by the CPU kernel")
    return threads


def _common_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> tuple[ScanArgs, list]:
    batch, dim, length = u.shape
    keep = []  # tensors whose memory the struct points into

    def kept(t):
        keep.append(t)
        return t

    u, delta = kept(_lanes_contiguous(u)), kept(_lanes_contiguous(delta))
    At = kept(A.float().t().contiguous())
    Bf, Cf = kept(B.float()), kept(C.float())
    Dv = kept(D.float().contiguous()) if D is not None else None
    zc = kept(_lanes_contiguous(z)) if z is not None else None
    bias = kept(delta_bias.float().contiguous()) if delta_bias is not None else None
    a = ScanArgs(
        batch=batch, L=length, D=dim, N=A.shape[1],
        u=_ptr(u), u_sb=u.stride(0), u_sl=u.stride(2),
        delta=_ptr(delta), dl_sb=delta.stride(0), dl_sl=delta.stride(2),
        A=_ptr(At),
        Bm=_ptr(Bf), B_sb=Bf.stride(0), B_sl=Bf.stride(2), B_sn=Bf.stride(1),
        Cm=_ptr(Cf), C_sb=Cf.stride(0), C_sl=Cf.stride(2), C_sn=Cf.stride(1),
        Dv=_ptr(Dv), dbias=_ptr(bias), softplus=int(bool(delta_softplus)),
    )
    if zc is not None:
        a.z, a.z_sb, a.z_sl = _ptr(zc), zc.stride(0), zc.stride(2)
    return a, keep


def forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False,
            order: torch.Tensor | None = None, out: torch.Tensor | None = None):
    """out (batch, D, L) in u's dtype, laid out channel-contiguous; plus the last state.

    Inference-only extensions for the fused mixer: `order` (L,) int64 visits the tokens in that
    order (the state follows it, outputs land at the tokens' own positions); `out`, a
    (batch, L, D) contiguous float32 buffer, receives the result added to what it holds."""
    lib = library()
    batch, dim, length = u.shape
    args, keep = _common_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    accumulate = out is not None
    if out is None:
        out = torch.empty(batch, length, dim, dtype=torch.float32)
    elif out.shape != (batch, length, dim) or out.dtype != torch.float32 or not out.is_contiguous():
        raise ValueError("out must be a contiguous float32 (batch, L, D) tensor")
    last = torch.empty(batch, dim, A.shape[1], dtype=torch.float32) if return_last_state else None
    args.out, args.o_sb, args.o_sl = _ptr(out), out.stride(0), out.stride(1)
    args.last_state, args.accumulate = _ptr(last), int(accumulate)
    if order is not None:
        order = order.to(torch.int64).contiguous()
        keep.append(order)
        args.order = order.data_ptr()
    _run(lib.ss_forward, args, batch * -(-dim // LANES))
    result = out.transpose(1, 2).to(u.dtype)
    return (result, last) if return_last_state else result


def _conv_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    batch, length, dim = x.shape
    x = x.float()
    if x.stride(2) != 1:
        x = x.contiguous()
    wt = weight.float().reshape(dim, -1).t().contiguous()
    b = bias.float().contiguous() if bias is not None else None
    args = ConvArgs(batch=batch, L=length, D=dim, K=wt.shape[0], x=_ptr(x), x_sb=x.stride(0), x_sl=x.stride(1),
                    w=_ptr(wt), bias=_ptr(b))
    return args, [x, wt, b]


def conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, order: torch.Tensor | None = None):
    """silu(causal depthwise conv1d) of x (batch, L, D) along `order` (no autograd; see
    causal_conv_silu); weight (D, 1, K) as nn.Conv1d stores it. Returns (batch, L, D) float32."""
    lib = library()
    args, keep = _conv_args(x, weight, bias)
    out = torch.empty(x.shape, dtype=torch.float32)
    args.out = _ptr(out)
    if order is not None:
        order = order.to(torch.int64).contiguous()
        keep.append(order)
        args.order = order.data_ptr()
    _run(lib.conv_silu_forward, args, x.shape[0] * -(-x.shape[2] // LANES))
    return out


class _CausalConvSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight, bias)
        return conv_silu(x, weight, bias)

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias = ctx.saved_tensors
        args, keep = _conv_args(x, weight, bias)
        g = dout.float().contiguous()
        dx = torch.zeros(x.shape, dtype=torch.float32)
        dwt = torch.empty(args.K, x.shape[2])
        db = torch.empty(x.shape[2]) if bias is not None else None
        args.dout, args.dx, args.dw, args.db = _ptr(g), _ptr(dx), _ptr(dwt), _ptr(db)
        _run(library().conv_silu_backward, args, -(-x.shape[2] // LANES))
        dw = dwt.t().reshape(weight.shape).to(weight.dtype)
        return dx.to(x.dtype), dw, (db.to(bias.dtype) if db is not None else None)


def causal_conv_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Differentiable silu(causal depthwise conv1d) for x (batch, L, D): what mamba computes
    with causal_conv1d_fn(..., activation="silu"), in the model's channel-last layout."""
    return _CausalConvSilu.apply(x, weight, bias)


def backward(dout, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias); None where the input was None.
    The forward states are recomputed per channel block, never stored."""
    lib = library()
    batch, dim, length = u.shape
    nstate = A.shape[1]
    args, keep = _common_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    g = _lanes_contiguous(dout)
    keep.append(g)
    args.dout, args.g_sb, args.g_sl = _ptr(g), g.stride(0), g.stride(2)
    du = torch.empty(batch, length, dim)
    ddelta = torch.empty(batch, length, dim)
    dz = torch.empty(batch, length, dim) if z is not None else None
    dAt = torch.empty(nstate, dim)
    dD = torch.empty(dim) if D is not None else None
    dbias = torch.empty(dim) if delta_bias is not None else None
    args.du, args.ddelta, args.dz = _ptr(du), _ptr(ddelta), _ptr(dz)
    args.dA, args.dD, args.ddbias = _ptr(dAt), _ptr(dD), _ptr(dbias)
    blocks = -(-dim // LANES)
    threads = max(1, min(torch.get_num_threads(), blocks))
    dBC = torch.zeros(2, threads, batch, length, nstate)
    scratch = torch.empty(threads, length * (nstate + 2) * LANES)
    args.dB, args.dC, args.scratch = _ptr(dBC[0]), _ptr(dBC[1]), _ptr(scratch)
    _run(lib.ss_backward, args, blocks)
    dB, dC = dBC.sum(1).transpose(2, 3)  # (batch, N, L)

    def like(grad, ref):
        return None if grad is None else grad.to(ref.dtype)

    return (like(du.transpose(1, 2), u), like(ddelta.transpose(1, 2), delta), like(dAt.t(), A),
            like(dB, B), like(dC, C), like(dD, D), like(dz.transpose(1, 2) if dz is not None else None, z),
            like(dbias, delta_bias))


class _SelectiveScanCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        ctx.delta_softplus = delta_softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        result = forward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        if return_last_state:
            ctx.mark_non_differentiable(result[1])
        return result

    @staticmethod
    def backward(ctx, dout, *unused):
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        grads = backward(dout, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus)
        return (*grads[:7], grads[7], None, None)


def selective_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """mamba-ssm's selective_scan_fn signature; B and C must be (batch, N, L), A real (D, N)."""
    if B.dim() != 3 or C.dim() != 3 or A.is_complex() or A.shape[1] > MAX_STATE:
        raise NotImplementedError("the CPU kernel takes real A (D, N<=64) and B, C of shape (batch, N, L)")
    return _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
