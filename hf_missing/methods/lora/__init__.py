from ..base import register_method
from .config import LoraMethodConfig
from .layer import LoraEncoderLayer
from .model import LoraMethodModel

PAPER = ("Hu, Shen, Wallis, Allen-Zhu, Li, Wang, Wang and Chen. LoRA: Low-Rank Adaptation of Large Language Models. "
         "ICLR 2022 (not a missing-modality method: the practitioner's first peer, via peft).")
CITATION = ("@inproceedings{hu2022lora,\n  title={LoRA: Low-Rank Adaptation of Large Language Models},\n"
            "  author={Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and "
            "Wang, Shean and Wang, Lu and Chen, Weizhu},\n  booktitle={ICLR},\n  year={2022}\n}")

register_method("lora", LoraMethodConfig, LoraMethodModel,
                "peft's LoRA (rank 8 on the attention's q and v of every layer) on the frozen backbone, plus the "
                "head; missing modalities get the baseline's placeholders.",
                paper=PAPER, citation=CITATION)

__all__ = ["LoraEncoderLayer", "LoraMethodConfig", "LoraMethodModel"]
