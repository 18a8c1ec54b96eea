"""Lockstep stream encoding (``ForwardContext.lockstep``): CLIP's two towers run layer by layer in step give the same
outputs as the towers run one after the other, through whatever modules sit in the layer lists (adapters' tuner
layers), and single-stream backbones ignore the flag."""

from __future__ import annotations

from unittest.mock import patch

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from hf_missing import MissingModalityCollator, MissingModalityForClassification, simulate_missing
from hf_missing.backbones import LockstepStream, run_in_lockstep
from hf_missing.backbones.clip import text_stream, vision_stream
from hf_missing.backbones.tiny import tiny_backbone, tiny_processor
from hf_missing.context import ForwardContext
from hf_missing.data.synthetic import shapes_dataset
from tests.conftest import make_batch, make_model, perturbed

# the released chain: feature buffers cannot run without lockstep (tests/test_rep.py checks the error)
REP_OPTIONS = {"prompt_length": 4, "prompt_depth": 2, "shared_dim": 8, "mlp_reduction": 4,
               "buffer_source": "parameters"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def train():
    """Twelve shapes samples, most missing one modality, with texts of different lengths (padded batches)."""
    return simulate_missing(shapes_dataset(n_train=12, n_test=2, seed=0), rate=0.7, pattern="both", seed=0)["train"]


def run(model: MissingModalityForClassification, batch: dict, lockstep: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's fused features and the logits of ``model(**batch)``, with ``ctx.lockstep`` set as given on the
    context the wrapper builds (seeded: ViLT draws the order of its image patches at random)."""
    encode, seen = model.interface.encode, {}

    def encode_with(inputs: dict[str, torch.Tensor], ctx: ForwardContext) -> torch.Tensor:
        ctx.lockstep = lockstep
        seen["features"] = encode(inputs, ctx)
        return seen["features"]

    torch.manual_seed(0)
    with patch.object(model.interface, "encode", encode_with), torch.no_grad():
        logits = model(**batch).logits
    return seen["features"], logits


def layer_order(model: MissingModalityForClassification, batch: dict, lockstep: bool) -> list[str]:
    """The order in which the modules in the streams' layer lists run (``text0``, ``vision0``, ...)."""
    calls, handles = [], []
    for stream in model.interface.streams:
        for i, layer in enumerate(model.interface.layers(stream.name)):
            handles.append(layer.register_forward_pre_hook(lambda *_, name=f"{stream.name}{i}": calls.append(name)))
    run_hooked(model, batch, lockstep, handles)
    return calls


def run_hooked(model: MissingModalityForClassification, batch: dict, lockstep: bool, handles: list) -> None:
    """One forward with the hooks ``handles`` registered, removed afterwards whatever happens."""
    try:
        run(model, batch, lockstep)
    finally:
        for handle in handles:
            handle.remove()


def unpadded(batch: dict) -> dict:
    """The samples of ``batch`` whose text fills the padded length (an all-ones attention mask)."""
    rows = batch["attention_mask"].bool().all(dim=1)
    assert 1 < rows.sum() < len(rows)
    return {k: v[rows] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.mark.parametrize("text_mask", ["padded", "unpadded", "none"])
@pytest.mark.parametrize("legacy_eos", [False, True])
def test_clip_lockstep_matches_the_towers_run_one_after_the_other(train, text_mask, legacy_eos):
    """Catches a lockstep that skipped ``final_layer_norm``, ``pre_layrnorm`` or ``post_layernorm``, one that built the
    text mask without causality (a mask without ``create_causal_mask``, or no ``is_causal=True`` when the unpadded
    mask is None), or one that pooled the text at another token than ``CLIPTextModel`` does in either
    ``eos_token_id`` branch (legacy id 2: the highest token id; otherwise the first EOS)."""
    model = make_model("clip", None).eval()
    model.backbone.text_model.eos_token_id = 2 if legacy_eos else model.backbone.text_model.eos_token_id
    batch = make_batch(train, "clip", n=12)
    assert (batch["attention_mask"] == 0).any()
    if text_mask != "padded":
        batch = unpadded(batch)
    if text_mask == "none":
        del batch["attention_mask"]
    sequential, _ = run(model, batch, lockstep=False)
    stepped, _ = run(model, batch, lockstep=True)
    assert torch.equal(stepped, sequential)


def test_clip_text_stream_matches_clip_text_model_at_every_position(train):
    """Catches a text mask without the padding part (padded positions then attend to padding: the pooled EOS output
    cannot show it, since causality already hides the padding after it) or without causality, and a vision stream
    without ``pre_layrnorm``: every position of both towers' last hidden states must match transformers'."""
    clip = make_model("clip", None).eval()
    backbone, interface = clip.backbone, clip.interface
    batch = make_batch(train, "clip", n=12)
    with torch.no_grad():
        text, vision = run_in_lockstep([
            text_stream(backbone.text_model, interface.layers("text"), batch["input_ids"], batch["attention_mask"]),
            vision_stream(backbone.vision_model, interface.layers("vision"), batch["pixel_values"]),
        ])
        expected_text = backbone.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        expected_vision = backbone.vision_model(pixel_values=batch["pixel_values"])
    assert torch.equal(backbone.text_model.final_layer_norm(text), expected_text.last_hidden_state)
    assert torch.equal(vision, expected_vision.last_hidden_state)


def last_layer_outputs(model: MissingModalityForClassification, batch: dict, lockstep: bool) -> list[torch.Tensor]:
    """Each stream's last-layer output (the pooled features cannot show the "zero" policy's embedding hooks: the
    missing modality's pooled feature is zeroed after the towers anyway)."""
    outputs, handles = [], []
    for stream in model.interface.streams:
        last = model.interface.layers(stream.name)[-1]
        handles.append(last.register_forward_hook(lambda _module, _args, output: outputs.append(output)))
    run_hooked(model, batch, lockstep, handles)
    return outputs


def test_clip_lockstep_keeps_the_zero_policy(train):
    """Catches a lockstep that ran the embeddings' ``forward`` directly (the "zero" policy's hooks on the embedding
    modules then never fire, and the missing modality's tokens stay in)."""
    model = make_model("clip", None).eval()
    batch = make_batch(train, "clip", n=12, policy="zero")
    assert batch["missing_policy"] == "zero" and (batch["missing_type"] != 0).any()
    assert torch.equal(run(model, batch, lockstep=True)[0], run(model, batch, lockstep=False)[0])
    stepped = last_layer_outputs(model, batch, lockstep=True)
    dummy = last_layer_outputs(model, {**batch, "missing_policy": "dummy"}, lockstep=True)
    for got, expected in zip(stepped, last_layer_outputs(model, batch, lockstep=False), strict=True):
        assert torch.equal(got, expected)
    for got, ignored, missing_code in zip(stepped, dummy, (1, 2), strict=True):
        missing = batch["missing_type"] == missing_code
        assert missing.any() and not torch.equal(got[missing], ignored[missing])


@pytest.mark.parametrize("method", [None, "map"])
def test_clip_lockstep_runs_layer_k_of_every_stream_before_layer_k_plus_1(train, method):
    """Catches a lockstep that ran the towers one after the other (or vision first), and, with an adapter injected,
    one that called the layers it found before injection or the tuner layers' ``base_layer`` (the modules in the
    layer lists, which the hooks watch, then never run)."""
    model = make_model("clip", method).eval()
    batch = make_batch(train, "clip", n=4)
    if method:
        assert all(isinstance(layer, BaseTunerLayer) for layer in model.interface.layers("text"))
    assert layer_order(model, batch, lockstep=True) == ["text0", "vision0", "text1", "vision1"]
    assert layer_order(model, batch, lockstep=False) == ["text0", "text1", "vision0", "vision1"]


@pytest.mark.parametrize(("method", "options"), [("map", {}), ("rep", REP_OPTIONS)])
def test_clip_adapter_logits_are_the_same_in_lockstep(train, method, options):
    """Catches a lockstep that bypassed the adapters' tuner layers in the layer lists, e.g. by calling their
    ``base_layer`` (MAP's prompts and REP's buffers, moved off their initial values, would then be missing from the
    logits)."""
    model = perturbed(make_model("clip", method, **options))
    batch = make_batch(train, "clip", n=12)
    _, sequential = run(model, batch, lockstep=False)
    _, stepped = run(model, batch, lockstep=True)
    assert torch.equal(stepped, sequential)


@pytest.mark.parametrize("kind", ["vilt", "fused"])
def test_single_stream_backbones_ignore_lockstep(train, kind):
    """Catches a single-stream backbone that changes its output (or fails) when a method asks for lockstep."""
    model = MissingModalityForClassification.from_backbone(tiny_backbone(kind), num_labels=4).eval()
    batch = MissingModalityCollator(tiny_processor(kind), modalities=model.interface.inputs)(list(train))
    assert len(model.interface.streams) == 1
    assert torch.equal(run(model, batch, lockstep=True)[1], run(model, batch, lockstep=False)[1])


def test_run_in_lockstep_lets_shorter_streams_finish_early():
    """Catches a lockstep that stopped at the shortest stream, or indexed past its end, on streams of unequal depth,
    and one that did not hand each layer its stream's own arguments."""
    calls = []

    class Step(torch.nn.Module):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def forward(self, hidden: torch.Tensor, shift: float, *, scale: float) -> torch.Tensor:
            calls.append(self.name)
            return hidden * scale + shift

    deep = LockstepStream(torch.nn.ModuleList([Step("a0"), Step("a1"), Step("a2")]), torch.ones(1), (1.0,),
                          {"scale": 2.0})
    shallow = LockstepStream(torch.nn.ModuleList([Step("b0")]), torch.zeros(1), (5.0,), {"scale": 1.0})
    a, b = run_in_lockstep([deep, shallow])
    assert calls == ["a0", "b0", "a1", "a2"]
    assert a.item() == 15.0 and b.item() == 5.0
