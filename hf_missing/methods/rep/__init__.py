from ..base import register_method
from .config import RepConfig
from .layer import RepBuffers, RepLayer
from .model import RepModel

register_method("rep", RepConfig, RepModel,
                "Buffer replay prompting: private + shared buffers, residual-bypass updates and layer-wise "
                "replay (REP).")

__all__ = ["RepBuffers", "RepConfig", "RepLayer", "RepModel"]
