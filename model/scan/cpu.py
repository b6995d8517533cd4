"""Fast CPU selective scan: the C kernel in cpu_kernel.c, built on first use with the system C
compiler into a per-user cache (like a JIT: no build step at install time, no torch headers),
called through ctypes on as many threads as torch uses, with a backward pass for training.

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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

LANES = 16  # W in cpu_kernel.c
MAX_STATE = 64  # MAXN in cpu_kernel.c
SOURCE = Path(__file__).with_name("cpu_kernel.c")
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fPIC", "-shared", "-std=c11", "-fopenmp-simd",
          "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]

_f = ctypes.POINTER(ctypes.c_float)
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
        ("dout", _f), ("g_sb", _i), ("g_sl", _i),
        ("du", _f), ("ddelta", _f), ("dz", _f),
        ("dA", _f), ("dD", _f), ("ddbias", _f),
        ("dB", _f), ("dC", _f),
        ("scratch", _f),
    ]


_lock = threading.Lock()
_lib = None
_build_error: str | None = None
_pool: ThreadPoolExecutor | None = None


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


def _build() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC)")
    source = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    key = hashlib.sha256(source + " ".join(CFLAGS).encode() + version.encode() + _cpu_signature().encode())
    target = _cache_dir() / f"selective_scan_{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{cc} failed:\n{proc.stderr[-2000:]}")
            os.replace(tmp, target)  # atomic: concurrent builders each publish a whole file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    for fn in (lib.ss_forward, lib.ss_backward):
        fn.argtypes = [ctypes.POINTER(ScanArgs), _i, _i]
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


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.cast(t.data_ptr(), _f)


def _lanes_contiguous(t: torch.Tensor) -> torch.Tensor:
    """(batch, D, L) float32 whose channel axis has stride 1 (free for the model's layout)."""
    t = t.float()
    if t.stride(1) != 1 and t.shape[1] > 1:
        t = t.transpose(1, 2).contiguous().transpose(1, 2)
    return t


def _run(fn, args: ScanArgs, items: int, per_thread=None):
    """Split [0, items) into one contiguous range per thread; ctypes releases the GIL."""
    global _pool
    threads = max(1, min(torch.get_num_threads(), items))
    bounds = [items * i // threads for i in range(threads + 1)]
    if per_thread is None:
        arg_list = [args] * threads
    else:
        arg_list = [per_thread(args, i) for i in range(threads)]
    calls = [(arg_list[i], bounds[i], bounds[i + 1]) for i in range(threads)]
    if threads == 1:
        codes = [fn(ctypes.byref(a), lo, hi) for a, lo, hi in calls]
    else:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="scan")
        codes = list(_pool.map(lambda c: fn(ctypes.byref(c[0]), c[1], c[2]), calls))
    if any(codes):
        raise ValueError(f"d_state above {MAX_STATE} is not supported by the CPU kernel")


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


def forward(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """out (batch, D, L) in u's dtype, laid out channel-contiguous; plus the last state."""
    lib = library()
    batch, dim, length = u.shape
    args, keep = _common_args(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    out = torch.empty(batch, length, dim, dtype=torch.float32)
    last = torch.empty(batch, dim, A.shape[1], dtype=torch.float32) if return_last_state else None
    args.out, args.o_sb, args.o_sl = _ptr(out), out.stride(0), out.stride(1)
    args.last_state = _ptr(last)
    blocks = -(-dim // LANES)
    _run(lib.ss_forward, args, batch * blocks)
    out = out.transpose(1, 2).to(u.dtype)
    return (out, last) if return_last_state else out


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

    def per_thread(base: ScanArgs, i: int) -> ScanArgs:
        a = ScanArgs.from_buffer_copy(base)
        a.dB, a.dC, a.scratch = _ptr(dBC[0, i]), _ptr(dBC[1, i]), _ptr(scratch[i])
        return a

    _run(lib.ss_backward, args, blocks, per_thread)
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
