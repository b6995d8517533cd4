"""Self-distillation from a richer view of the same clip (FlexiViT's recipe, stretched over time).

A frozen teacher (typically the checkpoint a fine-tune starts from) sees each poor training view
the way it sees clips best, and the student learns to match its predictions:

- a coarse patch (e.g. 8x56/28, a 2 x 2 token grid) is taught by the static-tokens patch on the
  same pixels (8x56/8, the native 7 x 7 grid);
- fewer frames than native (4 of a native 8) are taught by the native frame count: the batch is
  decoded at the teacher's frames and the student keeps every k-th of them.

Views the teacher would see no better than the student (the native grid at >= native frames)
train on the labels alone.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F

from model.config import VideoMambaConfig
from model.flex import static_tokens_patch

from .variants import Config


def teacher_view(view: Config, cfg: VideoMambaConfig) -> Config | None:
    """The view of the same clip the teacher sees, or None when it would see nothing more."""
    frames = view.frames
    if view.frames < cfg.num_frames and cfg.num_frames % view.frames == 0:
        frames = cfg.num_frames
    richer = Config(frames, view.pixels, static_tokens_patch(view.pixels, cfg.grid_size))
    return None if richer == view else richer


def student_frames(clip: torch.Tensor, frames: int, offset: int) -> torch.Tensor:
    """Every k-th frame of (B, C, T, H, W) from `offset`, where k = T / frames.

    The teacher's T frames are one random instant in each of T segments, so frames offset,
    offset + k, ... fall in the student's `frames` segments; a random offset per batch makes each
    one uniform within its segment, as the student's own sampling would be.
    """
    stride = clip.shape[2] // frames
    if stride * frames != clip.shape[2] or not 0 <= offset < stride:
        raise ValueError(f"cannot take {frames} of {clip.shape[2]} frames from offset {offset}")
    return clip[:, :, offset::stride]


def frame_offset(seed: int, epoch: int, step: int, stride: int) -> int:
    """The batch's frame offset, a function of (seed, epoch, step) so that --resume repeats it."""
    return random.Random(f"{seed}:{epoch}:{step}").randrange(stride)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on temperature-softened distributions, scaled by T^2 so its
    gradients keep their size as T changes (Hinton et al., 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits.float() / t, dim=-1), F.log_softmax(teacher_logits.float() / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t


class Teacher:
    """The frozen teacher of a training run and what it adds to each step.

        teacher = Teacher(net, cfg, weight=0.5, temperature=2.0, seed=0)
        frames = teacher.decode_frames(view)     # frames to decode for a batch of this view
        clips, taught = teacher.teach(clips, view, epoch, step)   # the student's clips
        loss = teacher.loss(label_loss, student_logits, taught)

    Each view's richer view is worked out once (`teacher_view`)."""

    def __init__(self, net: torch.nn.Module, cfg: VideoMambaConfig, weight: float,
                 temperature: float, seed: int):
        self.net = net.eval().requires_grad_(False)
        self.cfg, self.weight, self.temperature, self.seed = cfg, weight, temperature, seed
        self._views: dict[Config, Config | None] = {}

    def view(self, student: Config) -> Config | None:
        if student not in self._views:
            self._views[student] = teacher_view(student, self.cfg)
        return self._views[student]

    def decode_frames(self, student: Config) -> int:
        return (self.view(student) or student).frames

    def teach(self, clips: torch.Tensor, student: Config, epoch: int,
              step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the student's clips, the teacher's logits or None) for a batch decoded at
        `decode_frames(student)`: the teacher sees all of it, the student its own frames."""
        richer = self.view(student)
        if richer is None:
            return clips, None
        with torch.no_grad():
            taught = self.net(clips, patch=richer.patch)
        if clips.shape[2] != student.frames:
            stride = clips.shape[2] // student.frames
            clips = student_frames(clips, student.frames,
                                   frame_offset(self.seed, epoch, step, stride))
        return clips, taught

    def loss(self, label_loss: torch.Tensor, student_logits: torch.Tensor,
             taught: torch.Tensor | None) -> torch.Tensor:
        if taught is None:
            return label_loss
        return (1 - self.weight) * label_loss + self.weight * distill_loss(
            student_logits, taught, self.temperature)
