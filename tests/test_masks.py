"""The shared token-insertion helper and MAP's equations, on small tensors."""

import torch

from hf_missing.backbones import extend_attention_mask, insert_tokens
from hf_missing.backbones.base import causal_mask, prepend_kv
from hf_missing.methods.map.layer import initial_prompts
from tests.conftest import make_model

NEG = torch.finfo(torch.float32).min


def test_bidirectional_extension_keeps_padding_blocked():
    pad = torch.zeros(1, 1, 1, 4)
    pad[..., 3] = NEG
    out = extend_attention_mask(pad, 2, 4, causal=False, dtype=torch.float32, device=torch.device("cpu"))
    assert out.shape == (1, 1, 1, 6)
    assert (out[..., :2] == 0).all() and out[..., 5] == NEG


def test_square_bidirectional_mask_gets_prompt_rows():
    pad = torch.zeros(1, 1, 3, 3)
    pad[..., 2] = NEG
    out = extend_attention_mask(pad, 2, 3, causal=False, dtype=torch.float32, device=torch.device("cpu"))
    assert out.shape == (1, 1, 5, 5)
    assert (out[0, 0, :, 4] == NEG).all() and (out[0, 0, :, :4] == 0).all()


def test_causal_extension_prompts_precede_every_token():
    out = extend_attention_mask(None, 2, 3, causal=True, dtype=torch.float32, device=torch.device("cpu"))
    allowed = (out[0, 0] == 0).int()
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(allowed, expected)


def test_boolean_masks_stay_boolean():
    mask = torch.ones(2, 1, 1, 3, dtype=torch.bool)
    mask[1, ..., 2] = False
    out = extend_attention_mask(mask, 1, 3, causal=False, dtype=torch.float32, device=torch.device("cpu"))
    assert out.dtype == torch.bool and out[:, ..., 0].all() and not out[1, 0, 0, 3]


def test_insert_puts_tokens_in_front():
    hidden, tokens = torch.randn(2, 5, 4), torch.randn(2, 3, 4)
    joined, mask = insert_tokens(hidden, tokens, None, causal=False)
    assert mask is None and torch.equal(joined[:, :3], tokens) and torch.equal(joined[:, 3:], hidden)


def test_prepend_kv_extends_keys_values_and_causal_mask():
    k, v = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    pk, pv = torch.randn(1, 2, 8), torch.randn(1, 2, 8)
    k2, v2, mask = prepend_kv(k, v, (pk, pv), None, is_causal=True)
    assert k2.shape == (1, 2, 5, 4) and torch.equal(k2[:, :, 2:], k)
    assert torch.equal(v2[:, 1, :2], pv.view(1, 2, 2, 4)[:, :, 1])
    assert torch.equal(mask[..., 2:], causal_mask(3, torch.float32, torch.device("cpu")))
    assert (mask[..., :2] == 0).all()


def test_map_initialisation_rows():
    prompts = initial_prompts(3, 16, 4)
    assert prompts.sum() == 3 * 4
    assert prompts[0, 0].eq(1).all() and prompts[1, 2].eq(1).all() and prompts[2, 1].eq(1).all()


def test_map_selects_each_samples_prompt_and_accumulates(shapes_missing):
    """Eq. (MAP §3.2): layer i sees [P_i[m]; P_{i-1}[m]; ...; x]; a prompt change for pattern 2 only moves
    the logits of pattern-2 samples."""
    model = make_model("vilt", "map", prompt_length=4).eval()
    from tests.conftest import make_batch

    batch = make_batch(shapes_missing["train"], "vilt", n=12)
    before = model(**batch).logits
    layer = model.backbone.encoder.layer[1]
    with torch.no_grad():
        layer.map_prompts["default"][2] += torch.randn_like(layer.map_prompts["default"][2])
    after = model(**batch).logits
    changed = (before - after).abs().sum(1) > 1e-4
    assert torch.equal(changed, batch["missing_type"] == 2)


def test_causal_prompts_do_not_see_later_tokens():
    model = make_model("clip", None)
    layer = model.backbone.text_model.encoder.layers[0]
    x, prompts = torch.randn(1, 5, 32), torch.randn(1, 2, 32)
    h, mask = insert_tokens(x, prompts, None, causal=True)
    out = layer(h, mask)
    x2 = x.clone()
    x2[:, 3:] += 5.0
    h2, _ = insert_tokens(x2, prompts, None, causal=True)
    out2 = layer(h2, mask)
    assert torch.allclose(out[:, :5], out2[:, :5]) and not torch.allclose(out[:, 5:], out2[:, 5:])
