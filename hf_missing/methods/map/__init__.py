from ..base import register_method
from .config import MapConfig
from .layer import MapLayer
from .model import MapModel

register_method("map", MapConfig, MapModel,
                "Missing-aware prompts: one prompt set per missing pattern, input- or attention-level "
                "(Lee et al. 2023).")

__all__ = ["MapConfig", "MapLayer", "MapModel"]
