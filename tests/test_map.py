"""MAP (Lee et al., CVPR 2023): the prompt initialisation of the released code (learnt_p), for input- and
attention-level prompts, on the real ViLT wrapper."""

from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

from hf_missing.methods.map.layer import MapLayer, initial_prompts
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


def test_input_prompt_rows_wrap_by_the_whole_length():
    """Input-level prompts (no key/value halves) wrap the pattern row modulo the whole length: L = 2, three
    patterns -> rows 0, 0, 1. Mutant killed (map.layer.initial_prompts): ``half = length // 2`` for input prompts
    too (every row 0)."""
    assert _ones_rows(initial_prompts(3, 2, 4)) == [[0], [0], [1]]


def test_selected_joins_the_active_adapters_prompts_and_skips_empty_ones():
    """``_selected``: the active adapters' prompts for each sample's pattern, joined along the token axis, empty
    ones (layers past prompt_depth) left out, None when all are empty. Mutants killed (MapLayer._selected): the
    concatenation on dim 0 or 2; the emptiness test on the hidden axis; ``torch.cat([])`` when none is left."""
    prompts = {"a": torch.randn(3, 2, 4), "empty": torch.zeros(3, 0, 4), "b": torch.randn(3, 1, 4)}
    missing_type = torch.tensor([2, 0])
    layer = SimpleNamespace(map_prompts=prompts, active_adapters=["a", "empty", "b", "not_held"])
    expected = torch.cat([prompts["a"][missing_type], prompts["b"][missing_type]], dim=1)
    assert torch.equal(MapLayer._selected(layer, missing_type), expected)
    only_empty = SimpleNamespace(map_prompts=prompts, active_adapters=["empty"])
    assert MapLayer._selected(only_empty, missing_type) is None


def test_blocks_are_empty_without_prompts_to_insert():
    """A layer with no prompt of its own and none carried inserts no block. Mutant killed (MapLayer.blocks):
    ``if parts or True`` (``torch.cat([])`` raises)."""
    run = SimpleNamespace(ctx=SimpleNamespace(missing_type=torch.tensor([0])))
    layer = SimpleNamespace(_selected=lambda _missing_type: None)
    assert MapLayer.blocks(layer, run, torch.zeros(1, 3, 4), None, {}) == []


def _arguments(module: torch.nn.Module) -> dict:
    """The positional (after the hidden states) and keyword arguments of ``module``'s next call."""
    record: dict = {}
    module.register_forward_pre_hook(lambda _m, args, kwargs: record.update(args=args[1:], kwargs=kwargs),
                                     with_kwargs=True)
    return record


@pytest.mark.parametrize("backbone", ["vilt", "clip"])
def test_input_prompts_stop_at_prompt_depth_and_every_argument_reaches_the_base_layer(shapes_missing, backbone):
    """prompt_depth = 1 on the two-layer backbones, input-level: layer 0 of each stream holds prompts, layer 1 none;
    each base layer gets every argument besides the hidden states that its wrapper got (ViLT's layers take the mask
    positionally, CLIP's text layers ``is_causal`` by keyword). Mutants killed (MapLayer.update_layer):
    ``index < depth`` -> ``<=`` or always true, the empty length 0 -> 1; (MapLayer.adapted_forward, input path):
    ``*args`` or ``**kwargs`` dropped."""
    from tests.conftest import make_batch

    model = make_model(backbone, "map", prompt_length=2, prompt_depth=1).eval()
    layers = [module for module in model.modules() if isinstance(module, MapLayer)]
    assert [layer.map_prompts["default"].shape[1] for layer in layers] == [2 if layer.index < 1 else 0
                                                                          for layer in layers]
    assert {layer.index for layer in layers} == {0, 1}
    wrapped = [(_arguments(layer), _arguments(layer.base_layer)) for layer in layers]
    with torch.no_grad():
        model(**make_batch(shapes_missing["train"], backbone, n=4))
    for outer, inner in wrapped:
        assert len(inner["args"]) == len(outer["args"]) and inner["kwargs"].keys() == outer["kwargs"].keys()


@pytest.mark.parametrize("prompted", [True, False])
def test_attention_path_passes_the_prefix_and_every_argument_to_the_base_layer(prompted):
    """Attention-level MAP calls its base layer with the hidden states and every other argument, under a key/value
    prefix (first half of the selected prompt the keys, second half the values) or, with no prompt selected,
    directly. Mutants killed (MapLayer.adapted_forward): the hidden states replaced by None or dropped, ``*args`` or
    ``**kwargs`` dropped, on both attention paths."""
    calls, prefixes = [], []

    @contextmanager
    def kv_prefix(_base, _stream, keys, values):
        prefixes.append((keys, values))
        yield

    selected = torch.randn(2, 4, 3) if prompted else None
    layer = SimpleNamespace(_selected=lambda _missing_type: selected, stream=SimpleNamespace(name="text"),
                            base_layer=lambda *args, **kwargs: calls.append((args, kwargs)) or "out",
                            interface=SimpleNamespace(kv_prefix=kv_prefix))
    run = SimpleNamespace(config=SimpleNamespace(prompt_type="attention"),
                          ctx=SimpleNamespace(missing_type=torch.tensor([1, 2])))
    hidden = torch.randn(2, 5, 3)
    assert MapLayer.adapted_forward(layer, run, hidden, "mask", flag=True) == "out"
    (args, kwargs), = calls
    assert args[0] is hidden and args[1:] == ("mask",) and kwargs == {"flag": True}
    if prompted:
        (keys, values), = prefixes
        assert torch.equal(keys, selected[:, :2]) and torch.equal(values, selected[:, 2:])
    else:
        assert prefixes == []
