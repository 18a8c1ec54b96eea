from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification, simulate_missing
from hf_missing.backbones.fused.modeling import TinyConvEncoder
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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models run
    fastest so (several threads on shared cores make each forward ~40x slower), and every GEMM is bit-reproducible
    whatever the buffers' alignment, so bit-exact comparisons do not depend on GEMM blocking."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


ONEDNN_SMALL_BATCH = 16  # EfficientNet-Lite0 at 96 px on oneDNN: batches of 1-15 images round differently


def batch_size_sensitive_features(self: TinyConvEncoder, pixel_values: torch.Tensor) -> torch.Tensor:
    """``TinyConvEncoder.extract_features`` with the batch-size dependence of the real image encoder: oneDNN picks
    its convolution algorithm by batch size, and EfficientNet-Lite0's features of one image from a batch of 1-15
    images differ from those from a batch of 16-64 by up to 3e-5 (measured). Here batches under 16 take im2col +
    matmul: the same convolution, other rounding (the tiny conv alone gives the same bits for every batch size)."""
    conv = self.conv
    if len(pixel_values) >= ONEDNN_SMALL_BATCH:
        out = conv(pixel_values)
    else:
        columns = F.unfold(pixel_values, conv.kernel_size, stride=conv.stride)
        flat = columns.transpose(1, 2) @ conv.weight.flatten(1).T + conv.bias
        size = [(s - k) // st + 1 for s, k, st in zip(pixel_values.shape[2:], conv.kernel_size, conv.stride,
                                                        strict=True)]
        out = flat.transpose(1, 2).reshape(len(pixel_values), -1, *size)
    return F.gelu(out)


@pytest.fixture
def batch_sensitive_images(monkeypatch):
    """The tiny fused backbones' image encoder rounds by batch size as the real one does
    (:func:`batch_size_sensitive_features`)."""
    monkeypatch.setattr(TinyConvEncoder, "extract_features", batch_size_sensitive_features)
