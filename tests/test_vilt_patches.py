"""ViLT's patch selection (:func:`hf_missing.backbones.vilt._visual_embed`): transformers draws patches at random on
every forward; the backbone keeps that draw in training and makes evaluation deterministic and per-sample."""

import torch

from hf_missing.data.synthetic import tiny_backbone
from hf_missing.modeling import MissingModalityForClassification

PATCHES = 5  # the tiny ViLT: 30x30 pixels in 6x6 patches


def _embeddings(max_image_length: int):
    backbone = tiny_backbone("vilt")
    backbone.config.max_image_length = max_image_length
    MissingModalityForClassification.from_backbone(backbone, num_labels=2)  # installs the backbone's hooks
    return backbone.embeddings


def _pixels(widths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images 30 pixels high and ``widths`` wide, padded to the widest, with their pixel masks."""
    pixels = torch.randn(len(widths), 3, 30, max(widths))
    mask = torch.zeros(len(widths), 30, max(widths), dtype=torch.long)
    for i, w in enumerate(widths):
        mask[i, :, :w] = 1
    return pixels, mask


def test_evaluation_keeps_evenly_spaced_patches_in_raster_order_and_leaves_the_rng_alone():
    """Catches the random draw left in eval mode, a subset that is not the evenly spaced ranks floor(k v / m) of
    the image's own raster order, padding that is not masked and zeroed, and an evaluation that consumes the
    caller's random numbers (it would change what training draws next)."""
    embeddings = _embeddings(10).eval()
    pixels, mask = _pixels([60, 30])  # 50 and 25 patches
    state = torch.random.get_rng_state()
    x, x_mask, (index, (_, width)) = embeddings.visual_embed(pixels, mask, max_image_length=10)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert x.shape[1] == 11 and x_mask.tolist() == [[1] * 11, [1] * 11]
    raster = index[..., 0] * width + index[..., 1]
    assert raster[0].tolist() == [(k * 50 // 10) // 10 * width + (k * 50 // 10) % 10 for k in range(10)]
    assert raster[1].tolist() == [(k * 25 // 10) // PATCHES * width + (k * 25 // 10) % PATCHES for k in range(10)]
    again = embeddings.visual_embed(pixels, mask, max_image_length=10)[0]
    assert torch.equal(again, x)


def test_evaluation_pads_a_smaller_image_with_masked_zeros():
    """Catches padding filled with transformers' random (masked) patches or left unmasked: with every patch kept,
    the 25-patch image next to a 50-patch one is its 25 patches in raster order, then 25 zero, masked tokens."""
    embeddings = _embeddings(-1).eval()
    x, x_mask, (index, (_, width)) = embeddings.visual_embed(*_pixels([60, 30]), max_image_length=-1)
    assert x.shape[1] == 51 and x_mask[1].tolist() == [1] * 26 + [0] * 25
    assert (index[1, :25, 0] * width + index[1, :25, 1]).tolist() == [r * width + c for r in range(5) for c in
                                                                        range(5)]
    assert torch.count_nonzero(x[1, 26:]) == 0


def test_training_still_draws_a_random_subset():
    """Documents training: ViLT's random patch subset (its pre-training augmentation) is kept, so two training
    forwards of one image see different patches."""
    embeddings = _embeddings(10).train()
    pixels, mask = _pixels([30])
    torch.manual_seed(0)
    first = embeddings.visual_embed(pixels, mask, max_image_length=10)[2][0]
    torch.manual_seed(1)
    assert not torch.equal(embeddings.visual_embed(pixels, mask, max_image_length=10)[2][0], first)
