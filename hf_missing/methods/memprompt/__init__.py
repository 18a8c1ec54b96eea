from ..base import register_method
from .config import MemPromptConfig
from .layer import MemPromptBank, MemPromptLayer, PromptMemory
from .model import MemPromptModel

register_method("memprompt", MemPromptConfig, MemPromptModel,
                "Memory-driven prompts: generative prompts retrieved from per-modality prompt memories plus shared "
                "prompts mapped into each modality (MemPrompt, IJCAI 2025).")

__all__ = ["MemPromptBank", "MemPromptConfig", "MemPromptLayer", "MemPromptModel", "PromptMemory"]
