"""What every method gets from the shared plumbing (the token-insertion layer and the per-adapter pool): saved keys
under the method's prefix, two adapters side by side with set_adapter switching, disable_adapter, delete_adapter
(through PeftModel; the transformers side is in tests/test_common.py), and the insertion itself on three
modalities."""

import pytest
import torch
from peft import get_peft_model

import hf_missing
from hf_missing import MissingModalityCollator
from hf_missing.backbones import Stream
from hf_missing.context import ForwardContext
from hf_missing.data.synthetic import tiny_processor
from hf_missing.methods.base import Block, MethodRun, MissingMethodLayer
from hf_missing.methods.redeem import prepare_for_training
from tests.conftest import make_model

OPTIONS = {
    "map": {"prompt_length": 4},
    "rep": {"prompt_length": 4, "prompt_depth": 2, "shared_dim": 8, "mlp_reduction": 4},
    "memprompt": {"prompt_length": 3, "memory_size": 6, "top_n": 2, "prompt_layers": [0, 1]},
    "cmpt": {},
    "lora": {},
    "redeem": {"num_retrieved": 3, "bank_tokens": 4},
    "ragpt": {"num_retrieved": 3, "bank_tokens": 4},
}
BACKBONE = "clip"  # two streams, one of them causal


def _config(method: str):
    return hf_missing.get_method_config(method, **OPTIONS[method])


def _batch(model, method: str, data, cache) -> dict:
    """12 training samples, with REDEEM's memory bank built and neighbours retrieved for its adapters."""
    collator = MissingModalityCollator(tiny_processor(BACKBONE))
    train = data["train"]
    if method in ("redeem", "ragpt"):
        train, collator = prepare_for_training(model, train, collator, cache_dir=cache)
    return collator([train[i] for i in range(12)])


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def _perturb(model, adapter: str) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".{adapter}." in name or name.endswith(f".{adapter}"):
                p.add_(torch.randn_like(p) * 0.1)


def _holds(model, adapter: str) -> bool:
    """Whether any tensor, layer or pool entry of ``model`` still belongs to ``adapter``."""
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    layers = [m for m in model.modules() if isinstance(m, MissingMethodLayer)]
    return (any(f".{adapter}." in n or n.endswith(f".{adapter}") for n in names)
            or any(adapter in layer.method_config for layer in layers))


@pytest.mark.parametrize("method", [*OPTIONS, "baseline"])
def test_saved_keys_carry_the_method_prefix(method):
    """Catches a container named without the method's prefix (its keys would not get the adapter name back on load,
    as CMPT's LoRA once borrowed ``lora_``) and an adapter name left inside a saved key."""
    model = make_model(BACKBONE, method, **OPTIONS.get(method, {}))
    saved = model.get_adapter_state_dict()
    pooler = tuple(f"backbone.{m}." for m in model.interface.pooler_modules)
    own = [k for k in saved if not k.startswith(("head.", *pooler))]
    assert saved and all(f".{method}_" in k and ".default" not in k for k in own)
    assert bool(own) == (method != "baseline")


@pytest.mark.parametrize("method", OPTIONS)
def test_disable_and_delete_through_peft(shapes_missing, method, tmp_path):
    """The same contract through ``get_peft_model``: catches a pool or layer that ignores peft's
    ``disable_adapter()`` (logits would differ from the bare wrapper's) and a ``delete_adapter`` that leaves the
    deleted adapter's tensors or per-layer config behind."""
    base = make_model(BACKBONE, None).eval()
    batch = _batch(make_model(BACKBONE, method, **OPTIONS[method]), method, shapes_missing, tmp_path)
    reference = _logits(base, batch)
    peft_model = get_peft_model(base, _config(method))
    if method in ("redeem", "ragpt"):
        prepare_for_training(peft_model, shapes_missing["train"], MissingModalityCollator(tiny_processor(BACKBONE)),
                             cache_dir=tmp_path)
    _perturb(peft_model, "default")
    adapted = _logits(peft_model, batch)
    assert not torch.allclose(adapted, reference)
    with peft_model.disable_adapter():
        assert torch.equal(_logits(peft_model, batch), reference)
    assert torch.equal(_logits(peft_model, batch), adapted)
    peft_model.add_adapter("other", _config(method))
    peft_model.delete_adapter("other")
    assert not _holds(base, "other") and _holds(base, "default")


# ---- the insertion itself, on three modalities of one stream -------------------------------------------------
class _Recorder(torch.nn.Module):
    """An encoder layer that returns its input (ViLT-style tuple) and records it with its mask."""

    def forward(self, hidden, mask=None):
        self.seen = (hidden, mask)
        return (hidden,)


class _Markers(MissingMethodLayer):
    """Inserts one token of value -(k + 1) before modality k; carries them on as they come back."""

    def blocks(self, run, hidden, mask, carried):
        return [Block(m, carried.get(m, torch.full((hidden.shape[0], 1, 1), -(k + 1.0))), before=m)
                for k, m in enumerate(self.stream.modalities)]


def _markers(causal: bool) -> tuple[_Markers, MethodRun]:
    stream = Stream("joint", "layers", 1, 1, ("a", "b", "c"), "attention", causal)
    layer = _Markers(_Recorder(), None, stream, 0, None)
    ctx = ForwardContext(missing_type=torch.zeros(2, dtype=torch.long), present=torch.ones(2, 3, dtype=torch.bool),
                         modalities=stream.modalities,
                         spans={"joint": {"a": slice(0, 2), "b": slice(2, 3), "c": slice(3, None)}})
    return layer, MethodRun("default", hf_missing.get_method_config("map"), None, ctx)


def test_three_modalities_get_their_blocks_in_front_of_their_tokens_and_back():
    """Catches blocks placed at the stream's front instead of before their modality, a mask that hides the blocks
    or shows padding, and blocks not stripped again (the layer's output must be its input) or not carried on."""
    layer, run = _markers(causal=False)
    hidden = torch.arange(1.0, 6.0)[None, :, None].expand(2, 5, 1)
    padding = torch.zeros(2, 1, 1, 5)
    padding[1, ..., 4] = torch.finfo(torch.float32).min
    out = layer.adapted_forward(run, hidden, padding)[0]
    seen, mask = layer.base_layer.seen
    assert seen[0, :, 0].tolist() == [-1, 1, 2, -2, 3, -3, 4, 5]
    assert (mask[1, 0, 0] < 0).tolist() == [False] * 7 + [True]  # the blocks are visible, padding stays hidden
    assert torch.equal(out, hidden) and set(run.carried["joint"]) == {"a", "b", "c"}
    assert torch.equal(run.final["joint"], out)  # the stream's last layer


def test_a_block_inside_a_causal_stream_is_a_clear_error():
    """Catches a block inserted in the middle of a causal stream, where the tokens before it could not see it."""
    layer, run = _markers(causal=True)
    with pytest.raises(ValueError, match=r"causal joint stream only at its front.*before 'b'"):
        layer.adapted_forward(run, torch.zeros(2, 5, 1), None)
