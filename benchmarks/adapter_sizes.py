"""Bytes of ``adapter_model.safetensors`` per method on CLIP ViT-B/16 sizes (random weights: no download).

Each method is injected with its paper defaults into a wrapper with an MM-IMDb head (23 labels), saved with
``save_pretrained``, and the adapter file measured: this is what ``push_to_hub`` uploads besides the JSON
configs and the card. The adapter file holds the method's tensors plus the trained pooler and head.
Run: ``python benchmarks/adapter_sizes.py [--num-labels 23]``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from transformers import CLIPModel

import hf_missing
from hf_missing import MissingModalityForClassification
from hf_missing.backbones.clip import clip_vit_b16_config
from hf_missing.hub import ADAPTER_WEIGHTS_NAME

METHODS = ("baseline", "map", "rep")


def adapter_size(backbone: CLIPModel, method: str, num_labels: int) -> tuple[int, int]:
    """(bytes of the saved adapter file, trainable values) of ``method`` with its default options."""
    model = MissingModalityForClassification.from_backbone(copy.deepcopy(backbone), num_labels=num_labels)
    model.add_adapter(hf_missing.get_method_config(method))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return (Path(folder) / ADAPTER_WEIGHTS_NAME).stat().st_size, trained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-labels", type=int, default=23, help="classes of the head (MM-IMDb: 23)")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = CLIPModel(clip_vit_b16_config())
    total = sum(p.numel() for p in backbone.parameters())
    print(f"CLIP ViT-B/16 sizes: {total:,} backbone parameters, head with {args.num_labels} labels")
    print(f"{'method':<10} {'adapter bytes':>14} {'MiB':>8} {'trained values':>15} {'% of backbone':>14}")
    for method in METHODS:
        size, trained = adapter_size(backbone, method, args.num_labels)
        print(f"{method:<10} {size:>14,} {size / 2**20:>8.2f} {trained:>15,} {100 * trained / total:>13.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
