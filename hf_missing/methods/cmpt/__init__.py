from ..base import register_method
from .config import CmptConfig
from .layer import CmptLayer, CmptLoraLinear, CmptTensors, ProxyGate
from .model import CmptModel

PAPER = ("Reza, Patil, Solh and Asif. Robust Multimodal Learning via Cross-Modal Proxy Tokens. TMLR, "
         "arXiv:2501.17823.")
CITATION = ("@article{reza2025cmpt,\n  title={Robust Multimodal Learning via Cross-Modal Proxy Tokens},\n"
            "  author={Reza, Md Kaykobad and Patil, Ameya and Solh, Mashhour and Asif, M. Salman},\n"
            "  journal={Transactions on Machine Learning Research},\n  eprint={2501.17823},\n"
            "  archivePrefix={arXiv},\n  year={2025}\n}")

register_method("cmpt", CmptConfig, CmptModel,
                "Cross-modal proxy tokens: a learned token per modality estimates a missing modality's class token "
                "from the available modality; rank-1 LoRA on the frozen encoders, alignment loss, gated fusion (CMPT).",
                paper=PAPER, citation=CITATION)

__all__ = ["CmptConfig", "CmptLayer", "CmptLoraLinear", "CmptModel", "CmptTensors", "ProxyGate"]
