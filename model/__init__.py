"""StretchySnake model core: the flexible VideoMamba network and everything that is pure tensors
(config and presets, flexing, selective-scan backends, checkpoint I/O, FLOP counting)."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import PRESETS, VideoMambaConfig, get_config
from .flops import count_flops
from .network import VideoMamba, build_model

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint", "PRESETS", "VideoMambaConfig", "VideoMamba", "build_model", "count_flops", "get_config"]
