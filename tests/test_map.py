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
