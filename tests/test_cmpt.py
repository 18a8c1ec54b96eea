"""CMPT (cross-modal proxy tokens): masks and fusion on K=3 tensors, attention isolation on real backbones, the
alignment loss, every option, LoRA through peft, round trips, training and errors."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora.layer import LoraLayer
from safetensors.torch import load_file
from torch.nn import functional as F
from transformers import AutoModel, Trainer, TrainingArguments

import hf_missing
from hf_missing import MissingModalityCollator, metrics, simulate_missing
from hf_missing.backbones import ClipBackbone, PretrainedTokens, Stream, ViltBackbone
from hf_missing.data.synthetic import tiny_processor
from hf_missing.methods.cmpt import CmptConfig, ProxyGate
from hf_missing.methods.cmpt import layer as cmpt_layer
from hf_missing.methods.cmpt.layer import (
    CmptLayer,
    CmptRun,
    StreamLayout,
    alignment_loss,
    appended_rows,
    combine_estimates,
    extended_mask,
    initial_proxies,
    proxy_embedding,
    stream_layout,
)
from tests.conftest import BACKBONES, make_batch, make_model

K3 = ("a", "b", "c")
SPANS3 = {"a": slice(0, 3), "b": slice(3, 5), "c": slice(5, None)}


@pytest.fixture(scope="module")
def shapes_complete(shapes):
    return simulate_missing(shapes, rate=0.0, pattern="both", seed=0)


@pytest.fixture
def runs(monkeypatch):
    """Every CmptRun that fuses during the test, with the fused features the interface returned."""
    seen = []
    original = CmptRun.fuse

    def fuse(self, features):
        seen.append((self, features))
        return original(self, features)

    monkeypatch.setattr(CmptRun, "fuse", fuse)
    return seen


def _perturb_trainable(model, scale=0.1):
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * scale)


def _forward(model, batch, seed=1):
    torch.manual_seed(seed)  # ViLT may sample image patches at random
    return model(**batch)


# ---- K = 3: masks, estimates, gate and loss on small tensors ---------------------------------------
def _present(*rows):
    table = torch.tensor(rows, dtype=torch.bool)
    return {m: table[:, k] for k, m in enumerate(K3)}


def test_k3_proxy_rows_see_only_present_other_modalities():
    stream = Stream("joint", "x", 4, 2, K3, "attn")
    layout = stream_layout(stream, K3, "joint")
    assert layout == StreamLayout(K3, (), K3)
    present = _present([1, 1, 1], [1, 1, 0], [0, 1, 1])
    key_valid = torch.ones(3, 7, dtype=torch.bool)
    key_valid[0, 2] = False  # padding
    rows, has_source = appended_rows(layout, SPANS3, key_valid, present, causal=False)
    assert rows.shape == (3, 3, 10)
    proxy_c = rows[:, 2]  # the proxy for "c" reads a and b
    assert proxy_c[0, :7].tolist() == [1, 1, 0, 1, 1, 0, 0] and proxy_c[1, :7].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert proxy_c[2, :7].tolist() == [0, 0, 0, 1, 1, 0, 0]  # a is missing for sample 2
    assert rows[:, :, 7:].equal(torch.eye(3, dtype=torch.bool).expand(3, 3, 3))  # itself, no other proxy
    assert has_source.all()
    only_c = _present([0, 0, 1])
    assert appended_rows(layout, SPANS3, key_valid[:1], only_c, False)[1].tolist() == [[True, True, False]]


def test_k3_unimodal_shadows_attend_only_to_their_own_modality():
    stream = Stream("joint", "x", 4, 2, K3, "attn")
    layout = stream_layout(stream, K3, "unimodal")
    assert layout.shadowed == K3
    rows, _ = appended_rows(layout, SPANS3, torch.ones(1, 7, dtype=torch.bool), _present([1, 0, 1]), False)
    n = 7 + 3
    assert rows.shape == (1, n, 7 + n)
    shadow_b = rows[0, 3:5]
    assert shadow_b[:, :7].sum() == 0 and shadow_b[:, 7 + 3:7 + 5].all() and shadow_b.sum() == 4
    proxy_b = rows[0, 8]  # reads the shadows of a and c, not the real tokens
    assert proxy_b[:7].sum() == 0 and proxy_b[7:10].all() and proxy_b[12:14].all() and proxy_b[10:12].sum() == 0
    assert proxy_b[7 + 8] and proxy_b.sum() == 3 + 2 + 1


def _attend(hidden, mask, layers=2):
    for _ in range(layers):
        hidden = hidden + F.scaled_dot_product_attention(hidden[:, None], hidden[:, None], hidden[:, None],
                                                         attn_mask=mask)[:, 0]
    return hidden


@pytest.mark.parametrize("context", ["unimodal", "joint"])
def test_k3_proxy_for_a_missing_modality_ignores_its_tokens_and_real_tokens_ignore_proxies(context):
    stream = Stream("joint", "x", 8, 2, K3, "attn")
    layout = stream_layout(stream, K3, context)
    present = _present([1, 1, 0], [1, 1, 0])
    rows, _ = appended_rows(layout, SPANS3, torch.ones(2, 7, dtype=torch.bool), present, False)
    x, proxies = torch.randn(2, 7, 8), torch.randn(2, 3, 8)
    # "c" is missing: in the joint context the real tokens must not see it either (the "mask" policy)
    real_mask = torch.zeros(2, 1, 1, 7)
    real_mask[..., 5:] = torch.finfo(torch.float32).min
    mask = extended_mask(real_mask, rows, False, torch.float32)

    def run(x):
        shadows = [x[:, SPANS3[a]] for a in layout.shadowed]
        return _attend(torch.cat([x, *shadows, proxies], dim=1), mask)

    out = run(x)
    changed = x.clone()
    changed[:, 5:] += 3.0
    assert torch.allclose(run(changed)[:, -1], out[:, -1], atol=1e-6)  # the proxy for "c"
    alone = _attend(x, real_mask.expand(2, 1, 7, 7))
    assert torch.allclose(out[:, :7], alone, atol=1e-6)


def test_extended_mask_keeps_the_layers_causal_mask_and_bool_kind():
    rows = torch.zeros(1, 1, 4, dtype=torch.bool)
    rows[0, 0, [0, 1, 2, 3]] = True
    additive = extended_mask(None, rows, causal=True, dtype=torch.float32)
    assert additive.shape == (1, 1, 4, 4) and additive[0, 0, 0, 1] < -1e30 and additive[0, 0, 2, 0] == 0
    assert (additive[0, 0, :3, 3] < -1e30).all() and (additive[0, 0, 3] == 0).all()
    boolean = extended_mask(torch.ones(1, 1, 3, 3, dtype=torch.bool), rows, causal=True, dtype=torch.float32)
    assert boolean.dtype == torch.bool and not boolean[0, 0, :3, 3].any()


def test_k3_estimates_average_the_streams_that_had_a_source():
    e1, e2 = torch.ones(2, 4), 3 * torch.ones(2, 4)
    out = combine_estimates([("c", e1, torch.tensor([True, True])), ("c", e2, torch.tensor([True, False])),
                             ("a", e2, torch.tensor([False, False]))])
    assert out["c"][0][:, 0].tolist() == [2.0, 1.0] and out["c"][1].all()
    assert not out["a"][1].any()


@pytest.mark.parametrize(("kind", "shape"), [("vector", (5, 3, 4)), ("scalar", (5, 3, 1))])
def test_k3_gate_is_uniform_at_init_and_sums_to_one(kind, shape):
    gate = ProxyGate(3, 4, kind)
    tokens = torch.randn(5, 3, 4)
    weights = gate(tokens)
    assert weights.shape == shape and torch.allclose(weights, torch.full(shape, 1 / 3))
    assert gate.linear.weight.shape == ((8 if kind == "vector" else 2), 12)  # the last modality's logit is 0
    torch.nn.init.normal_(gate.linear.weight)
    assert torch.allclose(gate(tokens).sum(1), torch.ones(shape[0], shape[2])) and gate.prior().shape == (3,)


def test_two_modality_gate_is_sigmoid_and_its_complement():
    gate = ProxyGate(2, 3, "vector")
    torch.nn.init.normal_(gate.linear.weight)
    tokens = torch.randn(4, 2, 3)
    g = torch.sigmoid(gate.linear(tokens.flatten(1)))
    weights = gate(tokens)
    assert torch.allclose(weights[:, 0], g, atol=1e-6) and torch.allclose(weights[:, 1], 1 - g, atol=1e-6)


def test_k3_alignment_loss_averages_valid_pairs():
    proxy, target = torch.zeros(2, 4), torch.ones(2, 4)
    valid = torch.tensor([True, False])
    pairs = [(proxy, target, valid), (proxy, 2 * target, torch.ones(2, dtype=torch.bool)),
             (proxy, target, torch.zeros(2, dtype=torch.bool))]
    assert alignment_loss(pairs, "mse").item() == pytest.approx((1 + 4 + 4) / 3)
    assert alignment_loss([(target, -target, valid)], "cosine").item() == pytest.approx(2.0)
    assert alignment_loss([(proxy.requires_grad_(), target, ~valid & valid)], "mse").item() == 0.0


# ---- attention isolation on the real backbones ------------------------------------------------------
@pytest.mark.parametrize(("backbone", "context"), [("clip", "unimodal"), ("vilt", "unimodal"), ("vilt", "joint")])
def test_image_proxy_ignores_the_image_and_real_tokens_ignore_the_proxies(shapes_complete, runs, monkeypatch,
                                                                         backbone, context):
    model = make_model(backbone, "cmpt", single_stream_context=context).eval()
    _perturb_trainable(model)
    batch = make_batch(shapes_complete["train"], backbone, n=6)
    changed = {**batch, "pixel_values": batch["pixel_values"] + torch.randn_like(batch["pixel_values"])}
    with torch.no_grad():
        _forward(model, batch)
        _forward(model, changed)
    (run, features), (changed_run, _) = runs
    estimates, changed_estimates = run.estimates(), changed_run.estimates()
    image_unchanged = torch.equal(estimates["image"][0], changed_estimates["image"][0])
    assert image_unchanged == (context == "unimodal")  # "joint": the text tokens attended to the image
    assert not torch.allclose(estimates["text"][0], changed_estimates["text"][0])
    real = run.real_tokens(features)
    monkeypatch.setattr(cmpt_layer, "stream_layout", lambda stream, proxied, ctx: StreamLayout(stream.modalities,
                                                                                              (), ()))
    with torch.no_grad():
        _forward(model, batch)
    without = runs[-1][0].real_tokens(runs[-1][1])
    for m in ("text", "image"):
        assert torch.allclose(real[m], without[m], atol=1e-5), m


def test_proxies_replace_missing_class_tokens_and_align_on_complete_samples(shapes_missing, runs):
    model = make_model("clip", "cmpt").eval()
    _perturb_trainable(model)
    batch = make_batch(shapes_missing["train"], "clip", n=12)
    with torch.no_grad():
        out = _forward(model, batch)
    run, features = runs[0]
    real, estimates = run.real_tokens(features), run.estimates()
    present = model.patterns.present(batch["missing_type"])
    complete = present.all(1)
    assert complete.any() and (~complete).any()
    expected = 0.0
    for k, m in enumerate(model.patterns.modalities):
        proxy, available = estimates[m]
        assert available.tolist() == present[:, 1 - k].tolist()
        expected += ((proxy - real[m]).pow(2).mean(-1) * complete).sum()
    assert out.aux_loss.item() == pytest.approx(0.2 * expected.item() / (2 * complete.sum().item()), rel=1e-5)
    assert out.aux_loss > 0


def test_alignment_is_zero_without_complete_samples(shapes_missing):
    model = make_model("vilt", "cmpt")
    rows = [i for i in range(40) if shapes_missing["train"][i]["missing_type"] != 0][:6]
    batch = MissingModalityCollator(tiny_processor("vilt"))([shapes_missing["train"][i] for i in rows])
    assert _forward(model, batch).aux_loss.item() == 0.0


def _capture_compose(monkeypatch):
    captured = []
    original = ClipBackbone.compose
    monkeypatch.setattr(ClipBackbone, "compose", lambda self, tokens: captured.append(tokens) or original(self, tokens))
    return captured


@pytest.mark.parametrize("gate", ["vector", "scalar"])
def test_head_input_uses_the_proxy_only_where_the_modality_is_missing(shapes_missing, runs, monkeypatch, gate):
    model = make_model("clip", "cmpt", gate=gate).eval()
    _perturb_trainable(model)
    batch = make_batch(shapes_missing["train"], "clip", n=12)
    captured = _capture_compose(monkeypatch)
    with torch.no_grad():
        features = _forward(model, batch)
    run, pooled = runs[0]
    real, estimates = run.real_tokens(pooled), run.estimates()
    present = model.patterns.present(batch["missing_type"])
    stacked = torch.stack([torch.where(present[:, k, None], real[m], estimates[m][0])
                           for k, m in enumerate(model.patterns.modalities)], 1)
    weights = run.gate(stacked)
    assert weights.shape == ((12, 2, 16) if gate == "vector" else (12, 2, 1))
    for k, m in enumerate(model.patterns.modalities):
        assert torch.allclose(captured[0][m], weights[:, k] * stacked[:, k], atol=1e-6)
    assert features.logits.shape == (12, 4)


def test_proxy_when_present_mixes_real_and_proxy_on_complete_samples(shapes_complete, runs, monkeypatch):
    torch.manual_seed(0)
    model = make_model("clip", "cmpt", proxy_when_present=True).eval()
    _perturb_trainable(model)
    batch = make_batch(shapes_complete["train"], "clip", n=4)
    captured = _capture_compose(monkeypatch)
    with torch.no_grad():
        _forward(model, batch)
    run, features = runs[0]
    real, estimates = run.real_tokens(features), run.estimates()
    mixed = torch.stack([(real[m] + estimates[m][0]) / 2 for m in ("text", "image")], 1)
    weights = run.gate(mixed)
    assert torch.allclose(captured[0]["image"], weights[:, 1] * mixed[:, 1], atol=1e-6)


@pytest.mark.parametrize("detach", [True, False])
def test_detach_target_stops_the_alignment_gradient_at_the_real_token(shapes_complete, detach):
    # only an image proxy (in the text tower): the vision tower is then on the target's path alone
    model = make_model("clip", "cmpt", proxy_modalities=["image"], detach_target=detach)
    _perturb_trainable(model)
    _forward(model, make_batch(shapes_complete["train"], "clip", n=4)).aux_loss.backward()
    vision_lora = model.backbone.vision_model.encoder.layers[1].base_layer.self_attn.q_proj.lora_B["default"]
    text_lora = model.backbone.text_model.encoder.layers[1].base_layer.self_attn.q_proj.lora_B["default"]
    assert text_lora.weight.grad.abs().sum() > 0
    assert (vision_lora.weight.grad is None) == detach


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_alignment_form_option(shapes_complete, runs, kind):
    model = make_model("vilt", "cmpt", align_loss=kind, align_weight=0.5).eval()
    _perturb_trainable(model)
    batch = make_batch(shapes_complete["train"], "vilt", n=4)
    with torch.no_grad():
        out = _forward(model, batch)
    run, features = runs[0]
    real, estimates = run.real_tokens(features), run.estimates()
    pairs = [(estimates[m][0], real[m], torch.ones(4, dtype=torch.bool)) for m in ("text", "image")]
    assert out.aux_loss.item() == pytest.approx(0.5 * alignment_loss(pairs, kind).item(), rel=1e-5)


# ---- parameters, LoRA and options -------------------------------------------------------------------
@pytest.mark.parametrize("backbone", BACKBONES)
def test_only_lora_proxies_gate_head_and_pooler_train(backbone):
    model = make_model(backbone, "cmpt")
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    kinds = {"lora": [n for n in trained if ".cmpt_lora_A." in n or ".cmpt_lora_B." in n],
             "proxy": [n for n in trained if "cmpt_tensors.default.proxies" in n],
             "gate": [n for n in trained if "cmpt_tensors.default.gate" in n],
             "saved": [n for n in trained if "modules_to_save" in n]}
    assert sum(map(len, kinds.values())) == len(trained) and all(kinds.values())
    layers = sum(s.num_layers for s in model.interface.streams)
    assert len(kinds["lora"]) == layers * 2 * 2  # q and v, A and B
    lora = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(lora) == layers * 2 and all(m.r["default"] == 1 for m in lora)
    width = model.interface.streams[0].hidden_size
    proxies = [p for n, p in model.named_parameters() if "cmpt_tensors.default.proxies" in n]
    assert sum(p.shape[0] for p in proxies) == 2 and proxies[0].shape[-1] == width


@pytest.mark.parametrize(("backbone", "targets", "paths"), [
    ("clip", ["q", "v"], {"self_attn.q_proj", "self_attn.v_proj"}),
    ("clip", ["o", "mlp_in"], {"self_attn.out_proj", "mlp.fc1"}),
    ("vilt", ["q", "v"], {"attention.attention.query", "attention.attention.value"}),
    ("vilt", ["key", "intermediate.dense"], {"attention.attention.key", "intermediate.dense"}),
])
def test_lora_targets_resolve_through_the_backbone(backbone, targets, paths):
    model = make_model(backbone, "cmpt", lora_targets=targets, lora_rank=2)
    layer = next(m for m in model.modules() if isinstance(m, CmptLayer)).base_layer
    found = {n for n, m in layer.named_modules() if isinstance(m, LoraLayer)}
    assert found == paths
    assert all(m.lora_A["default"].weight.shape[0] == 2 for m in layer.modules() if isinstance(m, LoraLayer))


def test_without_lora_only_proxies_gate_and_head_train():
    model = make_model("clip", "cmpt", lora_targets=[])
    assert not [m for m in model.modules() if isinstance(m, LoraLayer)]


def test_gate_form_option_sets_the_gate_size():
    sizes = {}
    for kind in ("vector", "scalar"):
        gate = next(m for m in make_model("clip", "cmpt", gate=kind).modules() if isinstance(m, ProxyGate))
        sizes[kind] = gate.linear.weight.shape
    assert sizes == {"vector": (16, 32), "scalar": (1, 32)}  # K = 2, d = projection_dim 16


def _proxies(model, adapter="default"):
    """Per host stream, the proxies the adapter keeps in the model's pool."""
    return model.method_pool.cmpt_tensors[adapter].proxies


def test_proxy_initialisation_options():
    model = make_model("clip", "cmpt")
    clip = model.backbone
    eot = clip.text_model.embeddings.token_embedding.weight[clip.config.text_config.eos_token_id]
    text_host = _proxies(model)["text"]  # hosts the image proxy
    assert (text_host[0] - eot).abs().max() < 0.15
    vision_host = _proxies(model)["vision"]
    assert (vision_host[0] - model.interface.pretrained_token_embedding("image")).abs().max() < 0.15
    assert _proxies(make_model("clip", "cmpt", proxy_init="random"))["text"].std() < 0.05
    vilt = make_model("vilt", "cmpt")
    image_proxy = _proxies(vilt)["joint"][1]
    assert (image_proxy - vilt.backbone.embeddings.cls_token.reshape(-1)).abs().max() < 0.15


def test_proxy_modalities_subset(shapes_missing):
    model = make_model("clip", "cmpt", proxy_modalities=["image"])
    assert set(_proxies(model)) == {"text"} and _proxies(model)["text"].shape[0] == 1
    out = _forward(model, make_batch(shapes_missing["train"], "clip", n=8))
    assert torch.isfinite(out.loss)


def test_diagnostics_report_the_gate_prior():
    assert make_model("vilt", "cmpt").diagnostics() == {"cmpt/default/gate_prior_text": pytest.approx(0.5),
                                                         "cmpt/default/gate_prior_image": pytest.approx(0.5)}


# ---- round trips, disable_adapter, training ----------------------------------------------------------
def _round_trip(model, batch, folder):
    logits = _forward(model.eval(), batch).logits
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                       "config.json"]
    saved = load_file(folder / "adapter_model.safetensors")
    assert any(".cmpt_lora_A.weight" in k for k in saved) and any("cmpt_tensors.proxies." in k for k in saved)
    assert any("cmpt_tensors.gate.linear.weight" in k for k in saved) and not any(".default" in k for k in saved)
    assert not any(".lora_" in k for k in saved)  # CMPT's LoRA keys carry CMPT's prefix
    assert json.loads((folder / "adapter_config.json").read_text())["lora_rank"] == 1
    loaded = AutoModel.from_pretrained(folder).eval()
    assert torch.equal(_forward(loaded, batch).logits, logits)
    return loaded


@pytest.mark.parametrize("backbone", BACKBONES)
def test_save_load_bit_identical(shapes_missing, backbone, tmp_path):
    base = make_model(backbone, None)
    base.save_pretrained(tmp_path / "base")
    model = AutoModel.from_pretrained(tmp_path / "base", adapter="cmpt", num_labels=4)
    _perturb_trainable(model)
    batch = make_batch(shapes_missing["train"], backbone, n=12)
    loaded = _round_trip(model, batch, tmp_path / "adapter")
    state = {n: p for n, p in loaded.named_parameters() if ".cmpt_lora_B." in n}
    assert state and all(p.abs().sum() > 0 for p in state.values())  # LoRA B was loaded, not re-initialised
    bare = hf_missing.MissingModalityForClassification.from_pretrained(tmp_path / "base", num_labels=4)
    through_peft = PeftModel.from_pretrained(bare, tmp_path / "adapter").eval()
    assert torch.equal(_forward(through_peft, batch).logits, _forward(loaded, batch).logits)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_disable_adapter_restores_the_backbone(shapes_missing, backbone):
    from tests.test_training import _features

    base = make_model(backbone, None).eval()
    batch = make_batch(shapes_missing["train"], backbone, n=8)
    torch.manual_seed(1)
    reference = _features(base, batch)
    peft_model = get_peft_model(base, hf_missing.get_method_config("cmpt"))
    _perturb_trainable(peft_model)
    torch.manual_seed(1)
    assert not torch.allclose(_features(base, batch), reference)
    with peft_model.disable_adapter():
        torch.manual_seed(1)
        assert torch.equal(_features(base, batch), reference)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_trainer_reduces_the_loss_and_only_the_adapter_changes(shapes_missing, backbone, tmp_path):
    model = make_model(backbone, "cmpt")
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    epochs = {"clip": 10, "vilt": 5}[backbone]  # ViLT runs its shadow tokens too: fewer, slower epochs suffice
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", num_train_epochs=epochs,
                             per_device_train_batch_size=16, learning_rate=1e-2, logging_steps=1, save_strategy="no",
                             remove_unused_columns=False, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=shapes_missing["train"],
                      data_collator=MissingModalityCollator(tiny_processor(backbone)),
                      compute_metrics=metrics.for_task("single_label"))
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())


# ---- errors -------------------------------------------------------------------------------------------
def test_lora_target_that_matches_nothing_is_a_clear_error():
    with pytest.raises(ValueError, match=r"lora_targets entry 'qkv' matches no Linear layer of a clip .*self_attn"):
        make_model("clip", "cmpt", lora_targets=["q", "qkv"])
    with pytest.raises(ValueError, match=r"'q_proj' matches no Linear layer of a vilt"):
        make_model("vilt", "cmpt", lora_targets=["q_proj"])


@pytest.mark.parametrize("rank", [0, -1])
def test_non_positive_rank_is_a_clear_error(rank):
    with pytest.raises(ValueError, match=r"lora_rank must be a positive integer .*lora_targets=\[\]"):
        CmptConfig(lora_rank=rank)


def test_proxy_for_an_unknown_modality_is_a_clear_error():
    with pytest.raises(ValueError, match=r"proxy_modalities \['audio'\] are not modalities of this clip backbone"):
        make_model("clip", "cmpt", proxy_modalities=["text", "audio"])
    with pytest.raises(ValueError, match="leaves CMPT without proxies"):
        CmptConfig(proxy_modalities=[])


@pytest.mark.parametrize(("option", "value"), [("gate", "matrix"), ("align_loss", "l1"), ("proxy_init", "zeros"),
                                               ("single_stream_context", "both")])
def test_unknown_option_values_are_rejected(option, value):
    with pytest.raises(ValueError, match=f"{option} must be one of"):
        CmptConfig(**{option: value})


def test_missing_pretrained_embedding_points_to_random_init(monkeypatch):
    def refuse(self, modality):
        raise ValueError("no embedding")

    monkeypatch.setattr(ViltBackbone, "pretrained_token_embedding", refuse)
    with pytest.raises(ValueError, match="proxy_init='random'"):
        make_model("vilt", "cmpt")
    assert make_model("vilt", "cmpt", proxy_init="random") is not None


def test_second_adapter_adds_and_deletes_its_own_lora_proxies_and_gate(shapes_missing):
    model = make_model("clip", "cmpt")
    model.add_adapter(hf_missing.get_method_config("cmpt", gate="scalar"), adapter_name="other")
    lora = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert all(set(m.lora_A) == {"default", "other"} for m in lora) and len(lora) == 8
    model.set_adapter("other")
    assert torch.isfinite(_forward(model, make_batch(shapes_missing["train"], "clip", n=4)).loss)
    model.delete_adapter("other")
    assert all(set(m.lora_A) == {"default"} for m in lora)
    layers = [m for m in model.modules() if isinstance(m, CmptLayer)]
    assert all("other" not in m.method_config for m in layers) and set(model.method_pool.cmpt_tensors) == {"default"}


# ---- guards added after the mutation run (benchmarks/results/mutation.md) ---------------------------------
def test_causal_shadow_rows_are_lower_triangular_and_skip_padding():
    """In a causal stream holding several modalities, a shadow token sees itself and the shadows of its own modality
    before it that are not padding, as the modality's tokens would in a unimodal causal pass. Guards:
    appended_rows mutants 38-42 and 44-46 (the causal ``& tril`` dropped, turned into ``|``, or built with a wrong
    shape or dtype)."""
    stream = Stream("joint", "x", 4, 2, K3, "attn", causal=True)
    layout = stream_layout(stream, K3, "unimodal")
    key_valid = torch.ones(1, 7, dtype=torch.bool)
    key_valid[0, 3] = False  # the first token of "b" is padding
    rows, _ = appended_rows(layout, SPANS3, key_valid, _present([1, 1, 1]), causal=True)
    assert rows[0, 0:3, 7:10].equal(torch.ones(3, 3, dtype=torch.bool).tril())
    assert rows[0, 3:5, 10:12].tolist() == [[True, False], [False, True]]  # each shadow sees itself, not padding
    assert rows[0, :5, :7].sum() == 0  # shadows never see the real tokens


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_extended_mask_is_additive_in_the_layers_dtype(dtype):
    """An additive mask comes back in the layer's dtype (a half-precision layer gets a half-precision mask), with the
    dtype's minimum where attention is blocked. Guards: extended_mask mutants 49 and 52 (``dtype`` of the zeros
    dropped: a float32 mask)."""
    rows = torch.ones(2, 1, 4, dtype=torch.bool)
    rows[1, 0, 1] = False
    mask = extended_mask(torch.zeros(2, 1, 1, 3, dtype=dtype), rows, False, dtype)
    assert mask.dtype == dtype and mask[1, 0, 3, 1] == torch.finfo(dtype).min and (mask[0, 0, 3] == 0).all()


def test_a_one_modality_stream_gets_no_shadows():
    """Shadows exist only in a stream that holds several modalities; in a one-modality tower (CLIP's) the real tokens
    already attend to their own modality alone. Guards: stream_layout mutant 12 (``> 1`` -> ``>= 1``)."""
    text = Stream("text", "x", 4, 2, ("text",), "attn", causal=True)
    assert stream_layout(text, ("text", "image"), "unimodal") == StreamLayout(("text",), (), ("image",))


class _Embeddings(PretrainedTokens):
    model_type = "fake"

    def pretrained_token_embedding(self, modality):
        return {"a": torch.ones(4), "b": -torch.ones(4), "c": torch.zeros(4)}[modality]


def test_pretrained_proxies_are_the_embedding_plus_their_own_noise():
    """``proxy_init="pretrained"``: each proxy is its pretrained embedding plus its own N(0, 0.02^2) draw. Guards:
    initial_proxies mutants 5 (one noise vector shared by all the stream's proxies) and 10 (the noise subtracted)."""
    stream = Stream("joint", "x", 4, 2, K3, "attn")
    torch.manual_seed(0)
    proxies = initial_proxies(_Embeddings(), stream, ("a", "b"), CmptConfig(proxy_init="pretrained"))
    torch.manual_seed(0)
    noise = torch.randn(2, 4) * 0.02
    assert torch.equal(proxies, torch.stack([torch.ones(4), -torch.ones(4)]) + noise)


def test_a_backbone_without_pretrained_tokens_gets_a_proxy_init_error_naming_the_fix():
    """A backbone interface without pretrained token embeddings: the error names the backbone and ``proxy_init=
    'random'``, and its cause says that CMPT's ``proxy_init='pretrained'`` needs PretrainedTokens. Guards:
    proxy_embedding mutants 7, 12, 13 and 18-20 (the fix or the capability's ``needed_by`` text altered)."""
    stream = Stream("joint", "x", 4, 2, K3, "attn")
    with pytest.raises(ValueError, match=r"'a' embedding of the fake backbone, which it does not offer; "
                                         r"pass proxy_init='random'\.$") as err:
        proxy_embedding(SimpleNamespace(model_type="fake"), stream, "a")
    assert re.fullmatch(r"CMPT's proxy_init='pretrained' needs PretrainedTokens \(.*\), which the fake backbone "
                        r"interface does not offer; pass proxy_init='random'\.", str(err.value.__cause__))


def test_clip_image_proxy_reads_the_present_text_tokens_through_the_text_readout(shapes_missing, runs):
    """On CLIP the image proxy (in the text tower) attends to exactly the non-padding text tokens of samples with text,
    and itself; its estimate is the text tower's readout (final norm, text projection) of its last-layer output; the
    alignment term is filed under the adapter's name. Guards: CmptLayer._initial_tokens mutants 18, 43, 44 (key
    validity read from no mask or from another query row), CmptRun.estimates mutant 7 (readout of no stream) and
    CmptLayer.start_run mutant 2 (the run's adapter name lost)."""
    model = make_model("clip", "cmpt").eval()
    _perturb_trainable(model)
    batch = make_batch(shapes_missing["train"], "clip", n=8)
    with torch.no_grad():
        _forward(model, batch)
        run, _ = runs[0]
        mask = run.streams["text"].mask[:, 0, -1]
        allowed = mask if mask.dtype == torch.bool else mask == 0
        text = run.ctx.present_of("text")
        expected = torch.cat([batch["attention_mask"].bool() & text[:, None], torch.ones(8, 1, dtype=torch.bool)], 1)
        assert (batch["attention_mask"] == 0).any() and text.any() and torch.equal(allowed, expected)
        estimate, available = run.estimates()["image"]
        readout = model.interface.readout("text", run.carried["text"][cmpt_layer.APPENDED][:, -1:])[:, 0]
    assert available.equal(text) and torch.equal(estimate[available], readout[available])
    assert set(run.ctx.aux_losses) == {"cmpt_alignment/default"}


def test_a_stream_without_proxies_leaves_the_others_and_zero_weight_adds_no_alignment(shapes_missing, runs):
    """With only text proxied, CLIP's text tower hosts no proxy and the vision tower hosts the text proxy, whose
    estimate still reaches the fusion; ``align_weight=0`` adds no alignment term at all. Guards: CmptRun.estimates
    mutant 3 (``continue`` -> ``break`` at the first stream without proxies) and CmptRun.fuse mutant 37
    (``align_weight > 0`` -> ``>= 0``)."""
    model = make_model("clip", "cmpt", proxy_modalities=["text"], align_weight=0.0).eval()
    batch = make_batch(shapes_missing["train"], "clip", n=8)
    with torch.no_grad():
        out = _forward(model, batch)
    run, _ = runs[0]
    assert next(iter(run.streams)) == "text" and not run.streams["text"].layout.proxies
    assert run.estimates()["text"][1].tolist() == run.ctx.present_of("image").tolist()
    assert run.ctx.aux_losses == {} and out.aux_loss is None



def test_clip_text_rows_stay_causal_in_a_batch_without_padding(shapes_missing, runs):
    """A batch whose texts need no padding: CLIP's text layers may get no mask (causality from ``is_causal``), and
    the extended mask must then carry the causality itself, the real text rows lower-triangular. Guards:
    CmptLayer._initial_tokens mutant 48 (``extended_mask(..., causal=None)``)."""
    model = make_model("clip", "cmpt").eval()
    batch = make_batch(shapes_missing["train"], "clip", n=8)
    longest = int(batch["attention_mask"].sum(1).argmax())
    one = {k: v[longest:longest + 1] if torch.is_tensor(v) else v for k, v in batch.items()}
    with torch.no_grad():
        _forward(model, one)
    run, _ = runs[0]
    length = one["input_ids"].shape[1]
    mask = run.streams["text"].mask[0, 0, :length, :length]
    allowed = mask if mask.dtype == torch.bool else mask == 0
    assert bool(one["attention_mask"].all()) and allowed.equal(torch.ones(length, length, dtype=torch.bool).tril())
