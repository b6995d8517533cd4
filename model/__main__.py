"""Demo of the flexible network: one set of weights run at several (frames, pixels, patch)
configurations, with tokens, GFLOPs, latency and the top predictions for each.

    python -m model                                  # nano preset, random weights
    python -m model --preset tiny --configs 8x224x16,8x112x8
    python -m model --checkpoint path/to/ckpt_or_videomamba.pth
"""
from __future__ import annotations

import argparse
import time

import torch

from . import build_model, count_flops, load_checkpoint
from .flex import num_tokens
from .scan import pick_backend


def parse_configs(text: str) -> list[tuple[int, int, int]]:
    configs = []
    for item in text.split(","):
        try:
            frames, pixels, patch = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad configuration {item!r}: want FRAMESxPIXELSxPATCH, e.g. 8x224x16")
        configs.append((frames, pixels, patch))
    return configs


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nano", help="nano | tiny | small | middle (ignored with --checkpoint)")
    ap.add_argument("--checkpoint", help="our checkpoint directory or a public VideoMamba .pth")
    ap.add_argument("--configs", type=parse_configs, help="FRAMESxPIXELSxPATCH,... (default: native and flexed ones)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    net = load_checkpoint(args.checkpoint) if args.checkpoint else build_model(args.preset).eval()
    cfg = net.config
    labels = getattr(net, "labels", None) or [str(i) for i in range(cfg.num_classes)]
    native = (cfg.num_frames, cfg.img_size, cfg.patch_size)
    half = max(cfg.tubelet, cfg.num_frames // 2)
    configs = args.configs or [native, (cfg.num_frames, cfg.img_size // 2, max(1, cfg.patch_size // 2)),
                               (half, cfg.img_size * 2, cfg.patch_size * 2), (cfg.num_frames * 2, cfg.img_size, cfg.patch_size)]
    params = sum(p.numel() for p in net.parameters()) / 1e6
    print(f"VideoMamba C={cfg.embed_dim} depth={cfg.depth} ({params:.1f}M params), native {native[0]} frames x "
          f"{native[1]} px, patch {native[2]}; scan backend: {pick_backend(torch.empty(1))}")
    print(f"{'frames':>6} {'pixels':>6} {'patch':>5} {'tokens':>6} {'GFLOPs':>7} {'ms':>8}  top-3")
    # a smooth random clip: the same one, resized, for every configuration
    clip = torch.nn.functional.interpolate(torch.randn(1, 3, 4, 8, 8), size=(64, 256, 256), mode="trilinear")
    for frames, pixels, patch in configs:
        video = torch.nn.functional.interpolate(clip, size=(frames, pixels, pixels), mode="trilinear")
        with torch.inference_mode():
            net(video, patch=patch)  # first call computes the flexed weights; time the second
            t0 = time.perf_counter()
            probs = net(video, patch=patch).softmax(-1)[0]
            ms = (time.perf_counter() - t0) * 1e3
        top = probs.topk(min(3, probs.numel()))
        shown = ", ".join(f"{labels[i]} {p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{frames:>6} {pixels:>6} {patch:>5} {num_tokens(frames, pixels, patch, cfg.tubelet):>6} "
              f"{count_flops(cfg, frames, pixels, patch):>7.2f} {ms:>8.1f}  {shown}")


if __name__ == "__main__":
    main()
