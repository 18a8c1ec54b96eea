"""The ``lora`` method: peft's LoRA on the frozen backbone's q and v, plus the head. What trains, which layers are
wrapped, the options reaching peft, round trips, disabling, the zero-initialised B and clear errors."""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from peft.tuners.lora.layer import LoraLayer
from safetensors.torch import load_file
from transformers import AutoModel

import hf_missing
from hf_missing import MissingModalityForClassification
from hf_missing.hub.card import adapter_card
from hf_missing.methods.lora import LoraMethodConfig
from tests.conftest import BACKBONES, make_batch, make_model

pytestmark = pytest.mark.usefixtures("one_thread")

# The Linear layers the default targets (roles q and v) name in each tiny backbone's encoder layers.
QV_PATHS = {"clip": ("self_attn.q_proj", "self_attn.v_proj"),
            "vilt": ("attention.attention.query", "attention.attention.value")}


def _logits(model, batch) -> torch.Tensor:
    torch.manual_seed(1)  # ViLT draws a random patch order on every forward
    with torch.no_grad():
        return model(**batch).logits


def _lora_layers(model) -> dict[str, LoraLayer]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def _perturb_lora_b(model) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.add_(torch.randn_like(p) * 0.1)


# ---- what trains, what is wrapped, the options --------------------------------------------------------------
@pytest.mark.parametrize("backbone", BACKBONES)
def test_only_lora_a_b_head_and_pooler_train(backbone):
    """Catches a backbone weight left trainable (the wrapped Linear's own weight or bias, a whole attention block),
    LoRA tensors that do not train, and a head or pooler copy that does not."""
    model = make_model(backbone, "lora")
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    lora = [n for n in trained if ".lora_A.default." in n or ".lora_B.default." in n]
    saved = [n for n in trained if ".modules_to_save.default." in n]
    assert sorted(lora + saved) == sorted(trained)
    layers = sum(s.num_layers for s in model.interface.streams)
    assert len(lora) == layers * 2 * 2  # q and v, A and B (no bias)
    assert any(n.startswith("head.") for n in saved)
    assert all(n.startswith(tuple(f"backbone.{m}." for m in model.interface.pooler_modules)) or n.startswith("head.")
               for n in saved)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_q_and_v_of_every_layer_of_every_stream_and_nothing_else_are_wrapped(backbone):
    """Catches LoRA on one stream only (CLIP's vision tower forgotten), on the first layer only, on k / o / the MLP
    as well, or a hand-written low-rank layer instead of peft's ``lora.Linear``."""
    model = make_model(backbone, "lora")
    expected = {f"backbone.{model.interface.stream(s.name).layers_path}.{i}.base_layer.{path}"
                for s in model.interface.streams for i in range(s.num_layers) for path in QV_PATHS[backbone]}
    wrapped = _lora_layers(model)
    assert set(wrapped) == expected
    assert all(type(m) is PeftLoraLinear for m in wrapped.values())


def test_rank_alpha_and_dropout_reach_peft():
    """Catches options that never reach peft's layers (rank fixed at peft's default, alpha / r scaling lost, the
    dropout not applied) and a default other than the documented rank 8, alpha 16."""
    defaults = LoraMethodConfig()
    assert (defaults.rank, defaults.alpha, defaults.dropout, defaults.targets) == (8, 16.0, 0.0, ["q", "v"])
    for m in _lora_layers(make_model("clip", "lora")).values():
        assert (m.r["default"], m.lora_alpha["default"], m.scaling["default"]) == (8, 16.0, 2.0)
        assert isinstance(m.lora_dropout["default"], torch.nn.Identity)
    for m in _lora_layers(make_model("clip", "lora", rank=4, alpha=12.0, dropout=0.25)).values():
        assert (m.r["default"], m.lora_alpha["default"], m.scaling["default"]) == (4, 12.0, 3.0)
        assert m.lora_A["default"].weight.shape[0] == m.lora_B["default"].weight.shape[1] == 4
        assert m.lora_dropout["default"].p == 0.25


def test_targets_by_role_or_path_resolve_through_the_backbone():
    """Catches roles read as module paths (or paths refused) instead of resolved by the backbone interface."""
    model = make_model("vilt", "lora", targets=["o", "intermediate.dense"])
    layer = model.backbone.encoder.layer[0].base_layer
    assert {n for n, m in layer.named_modules() if isinstance(m, LoraLayer)} == {"attention.output.dense",
                                                                               "intermediate.dense"}


# ---- the zero-initialised B, disabling --------------------------------------------------------------------
@pytest.mark.parametrize("backbone", BACKBONES)
def test_first_logits_are_the_baselines_and_lora_b_changes_them(shapes_missing, backbone):
    """Catches a B not initialised to zero (the untrained adapter would already move the frozen features), missing
    modalities given other placeholders than the baseline's (the logits on incomplete samples would differ), a LoRA
    branch never called (a change to B would change nothing) and one cut off from the loss (B gets no gradient)."""
    batch = make_batch(shapes_missing["train"], backbone, n=8)
    assert not batch["missing_type"].eq(0).all()
    torch.manual_seed(0)
    baseline = make_model(backbone, "baseline").eval()
    torch.manual_seed(0)
    model = make_model(backbone, "lora").eval()
    assert torch.equal(_logits(model, batch), _logits(baseline, batch))
    model.train()
    torch.manual_seed(1)
    model(**batch).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".lora_B." in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    _perturb_lora_b(model.eval())
    assert not torch.allclose(_logits(model, batch), _logits(baseline, batch))


@pytest.mark.parametrize("backbone", BACKBONES)
def test_disable_adapter_gives_the_frozen_backbones_logits(shapes_missing, backbone):
    """Catches a LoRA branch that ignores peft's ``disable_adapter()`` (or a head copy that stays in use), and one
    that stays off after the context ends."""
    base = make_model(backbone, None).eval()
    batch = make_batch(shapes_missing["train"], backbone, n=8)
    reference = _logits(base, batch)
    peft_model = get_peft_model(base, hf_missing.get_method_config("lora"))
    _perturb_lora_b(peft_model)
    adapted = _logits(peft_model, batch)
    assert not torch.allclose(adapted, reference)
    with peft_model.disable_adapter():
        assert torch.equal(_logits(peft_model, batch), reference)
    assert torch.equal(_logits(peft_model, batch), adapted)


# ---- round trips ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_load_is_bit_identical_and_saves_only_lora_and_head(shapes_missing, backbone, tmp_path):
    """Catches a saved adapter that holds backbone weights (the wrapped Linear's base weight) or misses LoRA A / B,
    keys left with the adapter name, options lost from adapter_config.json, a B re-initialised on load, and a model
    card without LoRA's reference."""
    make_model(backbone, None).save_pretrained(tmp_path / "base")
    model = AutoModel.from_pretrained(tmp_path / "base", adapter="lora", adapter_options={"rank": 4}, num_labels=4)
    _perturb_lora_b(model)
    batch = make_batch(shapes_missing["train"], backbone, n=8)
    reference = _logits(model.eval(), batch)
    folder = tmp_path / "adapter"
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                       "config.json"]
    saved = [k.removeprefix("base_model.model.") for k in load_file(folder / "adapter_model.safetensors")]
    pooler = tuple(f"backbone.{m}." for m in model.interface.pooler_modules)
    lora = [k for k in saved if k.endswith((".lora_A.weight", ".lora_B.weight"))]
    assert len(lora) == 2 * len(_lora_layers(model))
    assert all(k in lora or k.startswith(("head.", *pooler)) for k in saved)
    assert not any(".default" in k for k in saved)
    assert json.loads((folder / "adapter_config.json").read_text())["rank"] == 4
    loaded = AutoModel.from_pretrained(folder).eval()
    assert isinstance(loaded, MissingModalityForClassification)
    assert torch.equal(_logits(loaded, batch), reference)
    bare = MissingModalityForClassification.from_pretrained(tmp_path / "base", num_labels=4)
    assert torch.equal(_logits(PeftModel.from_pretrained(bare, folder).eval(), batch), reference)
    assert "hu2022lora" in adapter_card(folder, "org/lora").text


# ---- errors ---------------------------------------------------------------------------------------------
def test_a_target_that_matches_nothing_is_a_clear_error():
    """Catches a typo in targets silently wrapping nothing (the method would train the head only)."""
    with pytest.raises(ValueError, match=r"lora targets entry 'qkv' matches no Linear layer of a clip .*self_attn"):
        make_model("clip", "lora", targets=["q", "qkv"])


@pytest.mark.parametrize(("options", "message"), [
    ({"rank": 0}, "lora rank must be a positive integer"),
    ({"targets": []}, r"lora targets=\[\] wraps nothing"),
])
def test_options_that_leave_nothing_to_train_are_clear_errors(options, message):
    """Catches a config that peft would reject deep inside injection (rank 0) or that silently becomes the
    baseline (no targets)."""
    with pytest.raises(ValueError, match=message):
        LoraMethodConfig(**options)
