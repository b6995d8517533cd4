"""Selective scan behind one function with mamba-ssm's selective_scan_fn signature.

Backends: "reference" (plain loop, the semantic truth, float64-capable), "cpu" (C kernel,
forward and backward), "mamba_ssm" (mamba-ssm's CUDA kernels, when installed) and "triton"
(GPU path, see model.scan.triton when present). The best one for the tensors' device is picked;
STRETCHYSNAKE_SCAN=<name> forces one.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

from .reference import selective_scan_ref

BACKENDS = ("reference", "cpu", "mamba_ssm", "triton")
ENV = "STRETCHYSNAKE_SCAN"


@functools.lru_cache(maxsize=None)
def _mamba_ssm_fn():
    """mamba-ssm's selective_scan_fn, or None: the package does not even import without its
    CUDA build, so any failure means "not available"."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:
        return None
    return selective_scan_fn


def _triton_fn():
    try:
        from . import triton as triton_backend  # added with the GPU kernels
    except ImportError:
        return None
    return triton_backend.selective_scan_triton


def _cpu_fn():
    from . import cpu
    return cpu.selective_scan_cpu if cpu.available() else None


def backend_fn(name: str):
    """The implementation for a backend name; raises when it cannot run here."""
    if name == "reference":
        return selective_scan_ref
    getter = {"cpu": _cpu_fn, "mamba_ssm": _mamba_ssm_fn, "triton": _triton_fn}.get(name)
    if getter is None:
        raise ValueError(f"unknown scan backend {name!r}; choose from {BACKENDS}")
    fn = getter()
    if fn is None:
        raise RuntimeError(f"scan backend {name!r} is not available on this machine")
    return fn


@functools.lru_cache(maxsize=None)
def _warn_fallback(reason: str):
    warnings.warn(f"selective scan falls back to the slow reference: {reason}", RuntimeWarning, stacklevel=3)


def pick_backend(u: torch.Tensor) -> str:
    """The backend that will run for these tensors (STRETCHYSNAKE_SCAN wins)."""
    forced = os.environ.get(ENV)
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{ENV}={forced!r}; choose from {BACKENDS}")
        return forced
    if u.device.type == "cuda":
        for name in ("triton", "mamba_ssm"):
            if (_triton_fn() if name == "triton" else _mamba_ssm_fn()) is not None:
                return name
        return "reference"
    if u.device.type == "cpu" and u.dtype != torch.float64:
        from . import cpu
        if cpu.available():
            return "cpu"
        _warn_fallback(cpu._build_error or "kernel unavailable")
    return "reference"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """u, delta, z: (batch, D, L); A: (D, N); B, C: (batch, N, L); D, delta_bias: (D,).
    Returns out (batch, D, L) in u's dtype (and the last state (batch, D, N) when asked)."""
    name = pick_backend(u)
    if name == "cpu" and (B.dim() != 3 or C.dim() != 3 or A.is_complex()):
        name = "reference"  # forms the kernel does not take (constant or grouped B/C)
    return backend_fn(name)(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
