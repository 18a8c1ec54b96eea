from __future__ import annotations

import pytest
import torch

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification, simulate_missing
from hf_missing.data.synthetic import shapes_dataset, tiny_backbone, tiny_processor

BACKBONES = ("clip", "vilt")


@pytest.fixture(scope="session")
def shapes():
    return shapes_dataset(n_train=96, n_test=48, seed=0)


@pytest.fixture(scope="session")
def shapes_missing(shapes):
    return simulate_missing(shapes, rate=0.7, pattern="both", seed=0)


def make_model(backbone: str, method: str | None = "map", **options) -> MissingModalityForClassification:
    model = MissingModalityForClassification.from_backbone(tiny_backbone(backbone), num_labels=4)
    if method:
        model.add_adapter(hf_missing.get_method_config(method, **options))
    return model


def perturbed(model: MissingModalityForClassification) -> MissingModalityForClassification:
    """``model`` in eval mode with its trainable tensors moved off their initial values (as training would), so
    that a save/load that dropped or re-initialised one changes the logits."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def make_batch(dataset, backbone: str, n: int = 8, policy: str = "dummy") -> dict:
    return MissingModalityCollator(tiny_processor(backbone), policy=policy)([dataset[i] for i in range(n)])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
