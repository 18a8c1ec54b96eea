from ..base import register_method
from .config import CmptConfig
from .layer import CmptLayer, ProxyGate
from .model import CmptModel, use_lora_key_prefix

register_method("cmpt", CmptConfig, CmptModel,
                "Cross-modal proxy tokens: a learned token per modality estimates a missing modality's class token "
                "from the available modality; rank-1 LoRA on the frozen encoders, alignment loss, gated fusion (CMPT).")
use_lora_key_prefix()

__all__ = ["CmptConfig", "CmptLayer", "CmptModel", "ProxyGate"]
