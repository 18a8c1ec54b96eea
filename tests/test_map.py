"""MAP (Lee et al., CVPR 2023): the prompt initialisation of the released code (learnt_p), for input- and
attention-level prompts, on the real ViLT wrapper."""

import pytest
import torch

from hf_missing.methods.map.layer import initial_prompts
from tests.conftest import make_model


def _ones_rows(prompts: torch.Tensor) -> list[list[int]]:
    """Per pattern, the prompt rows that are all ones (every other entry is zero)."""
    assert set(prompts.unique().tolist()) <= {0.0, 1.0}
    return [torch.nonzero(p.eq(1).all(dim=-1)).flatten().tolist() for p in prompts]


def test_attention_prompts_start_with_a_key_row_and_a_value_row_per_pattern():
    """The released code's learnt_p under prompt_type='attention' sets row c and row L/2 + c (complete c = 0,
    missing_text c = 2, missing_image c = 1), so that both the key half and the value half start non-zero.
    Catches an attention-mode initialisation that sets only row c (the value half then starts all zero)."""
    prompts = initial_prompts(3, 16, 4, attention=True)
    assert _ones_rows(prompts) == [[0, 8], [2, 10], [1, 9]]
    assert _ones_rows(initial_prompts(3, 16, 4)) == [[0], [2], [1]]


def test_vilt_attention_adapter_is_initialised_as_the_released_code():
    """The same rows in the adapter's own parameters on ViLT (attention mode, L = 4: half 2, rows c % 2 and
    2 + c % 2). Catches the layer building its prompts without the attention flag."""
    model = make_model("vilt", "map", prompt_type="attention", prompt_length=4, prompt_depth=1)
    prompts = model.backbone.encoder.layer[0].map_prompts["default"].detach()
    assert _ones_rows(prompts) == [[0, 2], [0, 2], [1, 3]]


@pytest.mark.parametrize("length", [2, 6])
def test_attention_rows_stay_inside_their_half(length):
    """A short prompt wraps the pattern row inside each half (row c mod L/2 and L/2 + c mod L/2); catches a key
    row that spills into the value half."""
    half = length // 2
    rows = _ones_rows(initial_prompts(3, length, 4, attention=True))
    assert rows == [sorted({c % half, half + c % half}) for c in (0, 2, 1)]


def _base_io(model) -> list[dict]:
    """Per ViLT layer, the input and output of the wrapped base layer in the next forward."""
    seen = [{} for _ in model.backbone.encoder.layer]
    for record, layer in zip(seen, model.backbone.encoder.layer, strict=True):
        layer.base_layer.register_forward_pre_hook(lambda _m, args, r=record: r.update(input=args[0]))
        layer.base_layer.register_forward_hook(lambda _m, _a, out, r=record: r.update(output=out[0]))
    return seen


def test_input_prompts_carry_the_previous_layers_outputs(shapes_missing):
    """MAP input mode (the released code's ``x = cat([prompt_i, x])`` on the block's output): layer 1 sees
    ``[P_1[m_b] | layer 0's output at the prompt positions | layer 0's output at the tokens]``. Mutation killed:
    carrying the pre-layer prompt tokens (``P_0[m_b]`` as inserted) instead of what layer 0 made of them."""
    from tests.conftest import make_batch, perturbed

    model = perturbed(make_model("vilt", "map", prompt_length=2, prompt_depth=2))
    batch = make_batch(shapes_missing["train"], "vilt", n=6)
    seen = _base_io(model)
    with torch.no_grad():
        model(**batch)
    first, second = seen
    prompts = [layer.map_prompts["default"][batch["missing_type"]] for layer in model.backbone.encoder.layer]
    assert torch.equal(first["input"][:, :2], prompts[0])
    assert torch.equal(second["input"][:, :2], prompts[1])
    assert torch.equal(second["input"][:, 2:], first["output"])
    assert not torch.allclose(first["output"][:, :2], prompts[0])
