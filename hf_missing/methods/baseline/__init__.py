from ..base import register_method
from .config import BaselineConfig
from .model import BaselineModel

register_method("baseline", BaselineConfig, BaselineModel,
                "Frozen backbone; trains the pooler and the head only (the papers' baseline row).")

__all__ = ["BaselineConfig", "BaselineModel"]
