from ..base import register_method
from .config import MemPromptConfig
from .layer import MemPromptBank, MemPromptLayer, PromptMemory
from .model import MemPromptModel

PAPER = ("Zhao, Xi, Fu and Zhao. Enhancing Multimodal Model Robustness Under Missing Modalities via "
         "Memory-Driven Prompt Learning. IJCAI 2025. https://github.com/zhao-yh20/MemPrompt")
CITATION = ("@inproceedings{zhao2025memprompt,\n  title={Enhancing Multimodal Model Robustness Under Missing "
            "Modalities via Memory-Driven Prompt Learning},\n  author={Zhao, Yihan and Xi, Wei and Fu, Xiao and "
            "Zhao, Jizhong},\n  booktitle={IJCAI},\n  year={2025}\n}")

register_method("memprompt", MemPromptConfig, MemPromptModel,
                "Memory-driven prompts: generative prompts retrieved from per-modality prompt memories plus shared "
                "prompts mapped into each modality (MemPrompt, IJCAI 2025).",
                paper=PAPER, citation=CITATION)

__all__ = ["MemPromptBank", "MemPromptConfig", "MemPromptLayer", "MemPromptModel", "PromptMemory"]
