"""StretchySnake model core: the flexible VideoMamba network and everything that is pure tensors
(config and presets, flexing, selective-scan backends, checkpoint I/O, FLOP counting)."""
from .config import PRESETS, VideoMambaConfig, get_config
from .network import VideoMamba, build_model

__all__ = ["PRESETS", "VideoMambaConfig", "VideoMamba", "build_model", "get_config"]
