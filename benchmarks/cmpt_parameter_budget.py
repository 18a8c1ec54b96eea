"""CMPT's trainable parameters on CLIP ViT-B/16 sizes (randomly initialised weights: no download).

Prints, per configuration, the adapter's parameters split into LoRA, proxy tokens and gate, the pooler modules
every method trains (final norms and projections) and the head, with the adapter's share of the frozen backbone.
Run: ``python benchmarks/cmpt_parameter_budget.py``.
"""

from __future__ import annotations

import json
import sys

import torch
from transformers import CLIPModel

import hf_missing
from hf_missing import MissingModalityForClassification
from hf_missing.backbones.clip import clip_vit_b16_config

PARTS = {"lora": (".cmpt_lora_A.", ".cmpt_lora_B."), "proxies": ("cmpt_tensors.default.proxies",),
         "gate": ("cmpt_tensors.default.gate",)}


def budget(options: dict, num_labels: int = 23) -> dict[str, float]:
    """Trainable parameters of a CMPT adapter with ``options`` on CLIP ViT-B/16 with a ``num_labels`` head."""
    torch.manual_seed(0)
    model = MissingModalityForClassification.from_backbone(CLIPModel(clip_vit_b16_config()), num_labels=num_labels)
    backbone = sum(p.numel() for p in model.backbone.parameters())
    model.add_adapter(hf_missing.get_method_config("cmpt", **options))
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    counts = {part: sum(v for n, v in trained.items() if any(k in n for k in keys)) for part, keys in PARTS.items()}
    adapter = sum(counts.values())
    head = sum(v for n, v in trained.items() if n.startswith("head."))
    return {"backbone": backbone, **counts, "adapter": adapter, "adapter_pct": round(100 * adapter / backbone, 4),
            "pooler": sum(trained.values()) - adapter - head, "head": head}


def main() -> int:
    rows = {"default (r=1 on q, v; vector gate)": {}, "scalar gate": {"gate": "scalar"},
            "r=1 on q, k, v, o": {"lora_targets": ["q", "k", "v", "o"]}}
    for name, options in rows.items():
        print(name, json.dumps(budget(options)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
