from ..base import register_method
from .config import RepConfig
from .layer import RepBuffers, RepLayer
from .model import RepModel

PAPER = ("Zhu, Liu, Ba, Xue and Zhang. Buffer Replay Enhances the Robustness of Multimodal Learning under "
         "Missing-Modality (REP: REplay Prompting).")
CITATION = ("@misc{zhu2025rep,\n  title={Buffer Replay Enhances the Robustness of Multimodal Learning under "
            "Missing-Modality},\n  author={Zhu, Hongye and Liu, Xuan and Ba, Yanwen and Xue, Jingye and Zhang, "
            "Shigeng}\n}")

register_method("rep", RepConfig, RepModel,
                "Buffer replay prompting: private + shared buffers, residual-bypass updates and layer-wise "
                "replay (REP).",
                paper=PAPER, citation=CITATION)

__all__ = ["RepBuffers", "RepConfig", "RepLayer", "RepModel"]
