"""Self-distillation (training/distill.py): which richer view teaches which poor one, the frames the
student keeps, the loss, and a distilled training run end to end."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import VideoMambaConfig, load_checkpoint
from model.network import VideoMamba
from training import train as train_mod
from training.distill import Teacher, distill_loss, frame_offset, student_frames, teacher_view
from training.variants import Config, ConfigSampler

from test_training import TINY, dataset  # noqa: F401  (the fixture)


def test_teacher_view_is_the_native_grid_at_the_native_frames_or_none():
    cfg = VideoMambaConfig(embed_dim=32, depth=2, img_size=112, num_frames=8)  # patch 16: a 7 x 7 grid
    assert teacher_view(Config(8, 56, 28), cfg) == Config(8, 56, 8)  # 2 x 2 grid taught by 7 x 7
    assert teacher_view(Config(4, 112, 16), cfg) == Config(8, 112, 16)  # half the frames taught by all
    assert teacher_view(Config(4, 56, 28), cfg) == Config(8, 56, 8)
    assert teacher_view(Config(2, 224, 32), cfg) == Config(8, 224, 32)
    assert teacher_view(Config(3, 112, 16), cfg) is None  # 3 does not divide 8: no frame subset to keep
    for same in (Config(8, 112, 16), Config(16, 224, 32), Config(32, 56, 8)):
        assert teacher_view(same, cfg) is None  # nothing richer to learn from


def test_student_keeps_every_kth_frame():
    clip = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(2, 3, 8, 4, 4)
    assert student_frames(clip, 4, 0)[0, 0, :, 0, 0].tolist() == [0, 2, 4, 6]
    assert student_frames(clip, 4, 1)[0, 0, :, 0, 0].tolist() == [1, 3, 5, 7]
    assert student_frames(clip, 2, 3)[1, 2, :, 0, 0].tolist() == [3, 7]
    assert student_frames(clip, 8, 0).shape == clip.shape
    for frames, offset in ((3, 0), (4, 2), (4, -1)):
        with pytest.raises(ValueError, match="cannot take"):
            student_frames(clip, frames, offset)
    offsets = [frame_offset(5, epoch, step, 2) for epoch in range(4) for step in range(50)]
    assert set(offsets) == {0, 1} and 70 < sum(offsets) < 130  # both halves of each segment, about evenly
    assert offsets == [frame_offset(5, epoch, step, 2) for epoch in range(4) for step in range(50)]  # resumable


def test_distill_loss_is_the_softened_kl_scaled_by_t_squared():
    torch.manual_seed(0)
    student, teacher = torch.randn(6, 5), torch.randn(6, 5) * 3
    for t in (1.0, 2.0, 4.0):
        p = F.softmax(teacher / t, dim=-1)
        expected = (p * (p.log() - F.log_softmax(student / t, dim=-1))).sum(-1).mean() * t * t
        torch.testing.assert_close(distill_loss(student, teacher, t), expected, rtol=1e-5, atol=1e-6)
    assert float(distill_loss(teacher, teacher, 2.0)) == pytest.approx(0.0, abs=1e-6)
    student.requires_grad_(True)
    distill_loss(student, teacher, 2.0).backward()
    assert student.grad.abs().sum() > 0


def test_decode_frames_asks_for_the_teachers_frames_and_keeps_the_students():
    cfg = VideoMambaConfig(embed_dim=32, depth=2, img_size=112, num_frames=8)
    sampler = ConfigSampler("none", cfg, also=[Config(4, 56, 28)], also_fraction=1.0)
    batches = train_mod.batches_for_epoch(8, 4, sampler, 0, 0, 0, 1, lambda c: teacher_view(c, cfg).frames)
    assert all(key[1:] == (8, 56, 28, 0, 4) for batch in batches for key in batch)


def test_distilled_training_feeds_teacher_and_student_their_views(dataset, tmp_path, monkeypatch):  # noqa: F811
    manifest = str(dataset / "manifest.csv")
    common = ["--flex", "none", "--data", manifest, "--batch-size", "4", "--workers", "0", "--epochs", "1",
              "--max-steps-per-epoch", "2", "--val-split", "", *TINY]
    train_mod.main(common + ["--out", str(tmp_path / "teacher")])
    teacher_before = load_checkpoint(tmp_path / "teacher").state_dict()

    calls = []  # (gradients on, frames, patch) of every forward pass
    forward = VideoMamba.forward

    def recording(self, video, patch=None):
        calls.append((torch.is_grad_enabled(), video.shape[2], patch))
        return forward(self, video, patch=patch)

    monkeypatch.setattr(VideoMamba, "forward", recording)
    # every batch at 2 frames x 32 px / patch 32 (a 1 x 1 grid); the tiny native is 4 x 32 / 16
    poor = ["--also", "2x32/32", "--also-fraction", "1", "--seed", "1"]
    plain = train_mod.main(common + poor + ["--out", str(tmp_path / "plain")])
    assert calls == [(True, 2, 32)] * 2
    calls.clear()
    taught = train_mod.main(common + poor + ["--out", str(tmp_path / "taught"), "--distill-from", str(tmp_path / "teacher")])
    assert calls == [(False, 4, 16), (True, 2, 32)] * 2  # the teacher sees 4 frames on a 2 x 2 grid
    assert np.isfinite(taught[0]["loss"]) and taught[0]["loss"] != plain[0]["loss"]
    after = load_checkpoint(tmp_path / "teacher").state_dict()
    assert all(torch.equal(teacher_before[k], after[k]) for k in after)  # the teacher file is untouched
    with pytest.raises(SystemExit):
        train_mod.parse_args(["--data", "x", "--out", "y", "--distill-weight", "1.5"])


def test_the_teacher_sees_the_whole_clip_and_the_student_its_frames():
    cfg = VideoMambaConfig(embed_dim=32, depth=1, img_size=32, num_frames=4, patch_size=16,
                           num_classes=3)
    teacher = Teacher(VideoMamba(cfg), cfg, weight=0.25, temperature=2.0, seed=5)
    poor = Config(2, 32, 32)
    assert teacher.view(poor) == Config(4, 32, 16) and teacher.decode_frames(poor) == 4
    clips = torch.randn(2, 3, 4, 32, 32)
    student, taught = teacher.teach(clips, poor, epoch=1, step=3)
    offset = frame_offset(5, 1, 3, 2)
    assert torch.equal(student, clips[:, :, offset::2]) and taught.shape == (2, 3)
    torch.testing.assert_close(taught, teacher.net(clips, patch=16))
    assert not any(p.requires_grad for p in teacher.net.parameters())
    label_loss, logits = torch.tensor(1.5), torch.randn(2, 3)
    torch.testing.assert_close(teacher.loss(label_loss, logits, taught),
                               0.75 * label_loss + 0.25 * distill_loss(logits, taught, 2.0))
    # the native view has nothing richer: the clips pass untouched, the loss is the labels'
    native = Config(4, 32, 16)
    assert teacher.decode_frames(native) == 4
    same, none = teacher.teach(clips, native, 0, 0)
    assert same is clips and none is None and teacher.loss(label_loss, logits, None) is label_loss
