"""REP's trainable parameters on CLIP ViT-B/16 sizes (randomly initialised weights: no download).

Prints the adapter's parameters (buffers, G_m, H, Theta_m, gates), the pooler modules every method trains,
and the head, each as a share of the backbone. Run: ``python benchmarks/rep_parameter_budget.py``.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import CLIPModel

import hf_missing
from hf_missing import MissingModalityForClassification
from hf_missing.backbones.clip import clip_vit_b16_config


def budget(options: dict, num_labels: int = 23) -> dict[str, float]:
    torch.manual_seed(0)
    model = MissingModalityForClassification.from_backbone(CLIPModel(clip_vit_b16_config()), num_labels=num_labels)
    backbone = sum(p.numel() for p in model.backbone.parameters() if not p.requires_grad)
    model.add_adapter(hf_missing.get_method_config("rep", **options))
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    adapter = sum(v for n, v in trained.items() if "rep_buffers" in n)
    head = sum(v for n, v in trained.items() if n.startswith("head."))
    pooler = sum(trained.values()) - adapter - head
    return {"backbone": backbone, "adapter": adapter, "adapter_pct": 100 * adapter / backbone,
            "pooler": pooler, "pooler_pct": 100 * pooler / backbone, "head": head}


def main() -> int:
    rows = {"default (l=36, d=6)": {}, "no replay": {"replay": False}, "no shared buffer": {"dual_buffers": False}}
    for name, options in rows.items():
        print(name, json.dumps(budget(options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
