"""Which device the model runs on, what it is called, and where its profile table lives
(`profiles/<slug of the device's name>.json`, where the server looks)."""
from __future__ import annotations

import platform
import re
from pathlib import Path

import torch

PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def resolve_device(device=None) -> torch.device:
    """cuda when available (or as asked), else cpu; ValueError for what cannot run here."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {str(dev)!r} (use cpu or cuda[:N])")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r}: CUDA is not available on this machine")
    return dev


def cpu_model() -> str:
    """The CPU's model string ("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz")."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device=None) -> str:
    dev = resolve_device(device)
    return torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()


def profile_name(device_name: str) -> str:
    """File stem of a device's table: "NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3"."""
    slug = re.sub(r"[^a-z0-9]+", "-", device_name.lower()).strip("-")
    if not slug:
        raise ValueError(f"device name {device_name!r} has no letters or digits to name a file by")
    return slug


def default_profile_path(device=None) -> Path:
    """profiles/<slug of the device's name>.json in the repository (where the server looks)."""
    return PROFILES / f"{profile_name(device_name(device))}.json"
