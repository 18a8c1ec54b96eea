"""REP's trainable parameters on CLIP ViT-B/16 sizes (randomly initialised weights: no download).

Prints the adapter's parameters, split into where they go (private and shared buffers, Theta_m, G_m with its
LayerNorms, H, the gates), the pooler modules every method trains and the head, each as a share of the backbone,
for the paper's l = 36, d = 6 and the options that reach its 0.2% claim. Run:
``python benchmarks/rep_parameter_budget.py``.
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
    parts: dict[str, int] = {}
    for name, count in trained.items():
        if "rep_buffers" in name:
            part = name.split("rep_buffers.default.")[1].split(".")[0]
            parts[part] = parts.get(part, 0) + count
    adapter = sum(parts.values())
    head = sum(v for n, v in trained.items() if n.startswith("head."))
    pooler = sum(trained.values()) - adapter - head
    return {"backbone": backbone, "adapter": adapter, "adapter_pct": round(100 * adapter / backbone, 3),
            "parts": parts, "pooler": pooler, "pooler_pct": round(100 * pooler / backbone, 3), "head": head}


def main() -> int:
    rows = {"default (l=36, d=6)": {}, "no replay": {"replay": False}, "no shared buffer": {"dual_buffers": False},
            "paper's 0.2% (l=36, d=6, shared_dim=32, mlp_reduction=32)": {"shared_dim": 32, "mlp_reduction": 32}}
    for name, options in rows.items():
        print(name, json.dumps(budget(options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
