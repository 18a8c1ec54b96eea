from ..base import register_method
from .config import MapConfig
from .layer import MapLayer
from .model import MapModel

PAPER = ("Lee, Tsai, Chiu and Lee. Multimodal Prompting with Missing Modalities for Visual Recognition. "
         "CVPR 2023. https://github.com/YiLunLee/missing_aware_prompts")
CITATION = ("@inproceedings{lee2023multimodal,\n  title={Multimodal Prompting with Missing Modalities for Visual "
            "Recognition},\n  author={Lee, Yi-Lun and Tsai, Yi-Hsuan and Chiu, Wei-Chen and Lee, Chen-Yu},\n"
            "  booktitle={CVPR},\n  pages={14943--14952},\n  year={2023}\n}")

register_method("map", MapConfig, MapModel,
                "Missing-aware prompts: one prompt set per missing pattern, input- or attention-level "
                "(Lee et al. 2023).",
                paper=PAPER, citation=CITATION)

__all__ = ["MapConfig", "MapLayer", "MapModel"]
