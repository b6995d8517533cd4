"""Analytic FLOP counts of the flexible VideoMamba for any (frames, pixels, patch).

Convention (fvcore's, as the VideoMamba and StretchySnake papers report GFLOPs): one
multiply-add counts as ONE FLOP. Matrix products and convolutions are counted as their
multiply-adds (MACs); biases, norms (RMSNorm), activations (SiLU, softplus), residual and
direction sums, flips and the positional-embedding add are not counted, because fvcore does not
count elementwise ops. All counts are for one forward pass (inference) of `batch` clips.

What is counted, per clip, with L = 1 + T'*H'*W' tokens (cls included; T' = frames // tubelet,
H' = H // p, W' = W // p, remainders dropped as the strided patch conv does), C = embed_dim,
E = d_inner = expand*C, R = dt_rank, N = d_state, K = d_conv:

    patch_embed  T'H'W' * (in_chans*tubelet*p*p) * C     the Conv3d/linear over patches
    in_proj      depth * L * C * 2E
    conv1d       depth * 2 * L * E * K                    depthwise causal conv, both directions
    x_proj       depth * 2 * L * E * (R + 2N)
    dt_proj      depth * 2 * L * R * E
    out_proj     depth * L * E * C                        once, on the sum of the two directions
    head         C * num_classes                          on the cls token only
    matmul       sum of the seven above
    scan         depth * 2 * 4.5 * L * E * N              the selective scans, analytic (below);
                                                          = 9 * depth * L * E * N, an integer
    total        matmul + scan

The selective scan is NOT seen by fvcore (it runs in a custom kernel), so published VideoMamba
figures leave it out; here it is counted analytically with the estimate the Mamba authors give
(state-spaces/mamba issue #110): 9*B*L*D*N real FLOPs per scan, a multiply and an add counted
separately -- 3 for the discretisation (delta*A, delta*B, times u), 4 for the associative scan
(about 2 combine steps per element, each a multiply and an add) and 2 for the output contraction
C.h (a multiply and an add). Halved for the multiply-add convention that is 4.5*L*E*N per
direction (D = E channels). For comparison, the sequential recurrence
h = exp(delta*A)*h + (delta*u)*B; y += C*h does 4 multiply-or-multiply-adds per (token, channel,
state), so 4.5 is within 13% of it. The O(L*E) parts of the scan (softplus(delta + bias), the
D*u skip, the silu(z) gate) are elementwise and not counted; the L*E*N exp evaluations are not
FLOPs either but are reported by scan_exps() (a benchmark uses them for a machine floor). Note
that some Mamba vision codebases add 9*B*L*D*N (real FLOPs) to fvcore's MAC counts, which counts
the scan twice as heavily as here.

Two sub-totals in the breakdown:
  "matmul"    what fvcore or torch's FlopCounterMode (divided by 2: it counts 2 per
              multiply-add) see on this implementation's pure-torch path, except that its padded
              F.conv1d computes K-1 extra, discarded outputs per direction (counted here as L
              outputs, like mamba's causal_conv1d kernel); on a fused CPU inference path that
              runs the conv in C, the counter sees matmul - conv1d;
  "published" patch_embed + in_proj + out_proj + head: what fvcore sees on the public
              OpenGVLab code, whose fused mamba_inner_fn_no_out_proj (conv1d, x_proj, dt_proj and
              the scan) is a custom op invisible to it. This reproduces their ImageNet figures
              (tiny/small/middle at 224 px, one frame: 1.08/4.24/12.64 G vs 1.1/4.3/12.7 G
              reported; tiny at 448/576 px: 4.28/7.08 G vs 4.3/7.1 G).

The one-off cost of flexing weights (patch-kernel resize, positional-embedding resampling) is
not counted: it is cached per configuration at inference.
"""
from __future__ import annotations

from .config import VideoMambaConfig
from .flex import num_tokens, token_grid

# Real FLOPs per (token, channel, state) of one selective scan (state-spaces/mamba#110), and
# the same in multiply-adds (fvcore's FLOP).
SCAN_REAL_FLOPS_PER_ELEMENT = 9
SCAN_MACS_PER_ELEMENT = SCAN_REAL_FLOPS_PER_ELEMENT / 2

MATMUL_PARTS = ("patch_embed", "in_proj", "conv1d", "x_proj", "dt_proj", "out_proj", "head")
PUBLISHED_PARTS = ("patch_embed", "in_proj", "out_proj", "head")


def _config(config) -> VideoMambaConfig:
    """A VideoMambaConfig, or anything carrying one as .config (a VideoMamba network)."""
    cfg = getattr(config, "config", config)
    if not isinstance(cfg, VideoMambaConfig):
        raise TypeError(f"expected a VideoMambaConfig or a network with .config, got {type(config).__name__}")
    return cfg


def _grid(cfg: VideoMambaConfig, frames: int, pixels, patch: int) -> tuple[int, int, int]:
    if not isinstance(patch, int) or patch < 1:
        raise ValueError(f"patch must be a positive int, got {patch!r}")
    h, w = (pixels, pixels) if isinstance(pixels, int) else tuple(pixels)
    if frames < cfg.tubelet:
        raise ValueError(f"need at least {cfg.tubelet} frames (the tubelet), got {frames}")
    if min(h, w) < patch:
        raise ValueError(f"frames of {h}x{w} px are smaller than one {patch}x{patch} patch")
    return token_grid(frames, (h, w), patch, cfg.tubelet)


def tokens(config, frames: int, pixels, patch: int) -> int:
    """Sequence length L of the mixers, cls token included: 1 + T'*H'*W'."""
    cfg = _config(config)
    _grid(cfg, frames, pixels, patch)
    h, w = (pixels, pixels) if isinstance(pixels, int) else tuple(pixels)
    return num_tokens(frames, (h, w), patch, cfg.tubelet)


def count_macs(config, frames: int, pixels, patch: int, batch: int = 1) -> dict:
    """Raw multiply-add counts (ints, not GFLOPs) per part, the keys of count_flops(breakdown=True)."""
    cfg = _config(config)
    t, gh, gw = _grid(cfg, frames, pixels, patch)
    patches = t * gh * gw
    length = 1 + patches
    c, e, r, n, k, depth = cfg.embed_dim, cfg.d_inner, cfg.dt_rank, cfg.d_state, cfg.d_conv, cfg.depth
    per_clip = {
        "patch_embed": patches * (cfg.in_chans * cfg.tubelet * patch * patch) * c,
        "in_proj": depth * length * c * 2 * e,
        "conv1d": depth * 2 * length * e * k,
        "x_proj": depth * 2 * length * e * (r + 2 * n),
        "dt_proj": depth * 2 * length * r * e,
        "out_proj": depth * length * e * c,
        "head": c * cfg.num_classes if cfg.num_classes > 0 else 0,
    }
    macs = {name: batch * value for name, value in per_clip.items()}
    macs["matmul"] = sum(macs[name] for name in MATMUL_PARTS)
    macs["published"] = sum(macs[name] for name in PUBLISHED_PARTS)
    # two directions of 4.5 MACs per (token, channel, state): 9 per layer, always an integer
    macs["scan"] = batch * depth * 2 * SCAN_REAL_FLOPS_PER_ELEMENT * length * e * n // 2
    macs["total"] = macs["matmul"] + macs["scan"]
    return macs


def count_flops(config, frames: int, pixels, patch: int, batch: int = 1, breakdown: bool = False):
    """GFLOPs of one forward pass in fvcore's convention (one multiply-add = one FLOP), the
    selective scan included analytically (see the module docstring).

    config: a VideoMambaConfig (or a VideoMamba network); pixels: int (square) or (H, W).
    breakdown=False: the total as a float. breakdown=True: a dict of GFLOPs with keys
    patch_embed, in_proj, conv1d, x_proj, dt_proj, out_proj, head, matmul (their sum), scan,
    total (matmul + scan) and published (what fvcore reports on the public fused-kernel code).
    """
    macs = count_macs(config, frames, pixels, patch, batch)
    if not breakdown:
        return macs["total"] / 1e9
    return {name: value / 1e9 for name, value in macs.items()}


def matmul_flops(config, frames: int, pixels, patch: int, batch: int = 1) -> float:
    """GFLOPs of the linear and convolution layers only (no scan): count_flops' "matmul"."""
    return count_macs(config, frames, pixels, patch, batch)["matmul"] / 1e9


def scan_flops(config, frames: int, pixels, patch: int, batch: int = 1) -> float:
    """GFLOPs (multiply-add convention) of the selective scans: depth * 2 * 4.5 * L * E * N * batch / 1e9."""
    return count_macs(config, frames, pixels, patch, batch)["scan"] / 1e9


def scan_exps(config, frames: int, pixels, patch: int, batch: int = 1) -> int:
    """Number of exp evaluations in the selective scans, exp(delta*A) for every token, channel
    and state of both directions of every layer: batch * depth * 2 * L * E * N (an int)."""
    cfg = _config(config)
    length = tokens(cfg, frames, pixels, patch)
    return batch * cfg.depth * 2 * length * cfg.d_inner * cfg.d_state
