"""The shared token-insertion helper and MAP's equations, on small tensors."""

import pytest
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
    """Catches tokens appended instead of prepended, or a mask invented where the stream had none."""
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


def _attention_module(kind: str):
    """Layer 0's self-attention of a tiny backbone, with its query/key/value projections and its output map."""
    model = make_model(kind, None).eval()
    interface, stream = model.interface, model.interface.streams[-1]
    interface.enable_kv_prefix()
    layer = interface.layers(stream.name)[0]
    attention = layer.get_submodule(stream.attention_path)
    if kind == "clip":
        return interface, layer, stream, attention, (attention.q_proj, attention.k_proj, attention.v_proj), \
            attention.out_proj, attention.num_heads
    heads = attention.num_attention_heads
    return interface, layer, stream, attention, (attention.query, attention.key, attention.value), None, heads


@pytest.mark.parametrize("kind", ["vilt", "clip"])
def test_attention_prefix_goes_to_keys_and_values_unprojected(kind):
    """MAP's attention-level prompts (prefix tuning): the first half of the prompt is prepended to the per-head keys,
    the second half to the values, as they are (not through the key/value projections). Recomputes one attention by
    hand; catches keys and values swapped and a prefix routed through W_k / W_v."""
    interface, layer, stream, attention, (wq, wk, wv), out, heads = _attention_module(kind)
    torch.manual_seed(0)
    hidden, keys, values = torch.randn(2, 5, stream.hidden_size), torch.randn(2, 3, stream.hidden_size), \
        torch.randn(2, 3, stream.hidden_size)

    def split(x):
        return x.view(2, x.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(wq(hidden)), split(torch.cat([keys, wk(hidden)], 1)), split(torch.cat([values, wv(hidden)], 1))
    expected = ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).softmax(-1) @ v
    expected = expected.transpose(1, 2).reshape(2, 5, -1)
    expected = out(expected) if out is not None else expected
    with torch.no_grad(), interface.kv_prefix(layer, stream.name, keys, values):
        got = attention(hidden)[0]
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-4)


def test_map_attention_prompts_send_the_first_half_to_the_keys(shapes_missing):
    """MAP attention mode: each sample's prompt P[m_b] is split in halves, the first prepended to the keys and the
    second to the values; catches the halves swapped or another sample's prompt chosen. The prompts are moved off
    their initialisation first: there both halves of a pattern's prompt are equal (rows c and L/2 + c)."""
    from tests.conftest import make_batch, perturbed

    model = perturbed(make_model("vilt", "map", prompt_type="attention", prompt_length=4, prompt_depth=1))
    batch = make_batch(shapes_missing["train"], "vilt", n=6)
    seen = []
    original = model.interface.kv_prefix

    def spy(layer, stream, keys, values):
        seen.append((keys, values))
        return original(layer, stream, keys, values)

    model.interface.kv_prefix = spy
    with torch.no_grad():
        model(**batch)
    prompts = model.backbone.encoder.layer[0].map_prompts["default"][batch["missing_type"]]
    (keys, values), = seen
    assert torch.equal(keys, prompts[:, :2]) and torch.equal(values, prompts[:, 2:])

