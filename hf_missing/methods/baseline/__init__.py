from ..base import register_method
from .config import BaselineConfig
from .model import BaselineModel

PAPER = ("The frozen-backbone baseline (pooler and head trained) of the missing-modality papers, as in Lee et "
         "al., Multimodal Prompting with Missing Modalities for Visual Recognition, CVPR 2023.")
CITATION = ("@inproceedings{lee2023multimodal,\n  title={Multimodal Prompting with Missing Modalities for Visual "
            "Recognition},\n  author={Lee, Yi-Lun and Tsai, Yi-Hsuan and Chiu, Wei-Chen and Lee, Chen-Yu},\n"
            "  booktitle={CVPR},\n  pages={14943--14952},\n  year={2023}\n}")

register_method("baseline", BaselineConfig, BaselineModel,
                "Frozen backbone; trains the pooler and the head only (the papers' baseline row).",
                paper=PAPER, citation=CITATION)

__all__ = ["BaselineConfig", "BaselineModel"]
