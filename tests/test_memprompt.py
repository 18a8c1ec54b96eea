"""MemPrompt (memory-driven prompts): retrieval (eq. 4-6), shared prompts (eq. 7), placement (eq. 2, Table 4),
switches (Table 2), the optional orthogonality loss, diagnostics, training and round trips."""

import math

import pytest
import torch
from peft import get_peft_model
from torch.nn import functional as F

import hf_missing
from hf_missing.context import ForwardContext
from hf_missing.methods.base import Block, MethodRun, visible_keys
from hf_missing.methods.memprompt import MemPromptBank, MemPromptConfig, MemPromptLayer, PromptMemory
from hf_missing.methods.memprompt.layer import normalized_entropy, pooled_query, squared_cosine
from tests.conftest import BACKBONES, make_batch, make_model

L = 3
TINY = {"prompt_length": L, "memory_size": 6, "top_n": 2, "prompt_layers": [0, 1]}
WIDTHS = {"text": 8, "image": 12}


def _bank(**options) -> MemPromptBank:
    return MemPromptBank(WIDTHS, MemPromptConfig(**{**TINY, **options}))


def _layers(model) -> list[MemPromptLayer]:
    return [m for m in model.modules() if isinstance(m, MemPromptLayer)]


def _pooled_bank(model) -> MemPromptBank:
    return model.method_pool.memprompt_bank["default"]


# ---- eq. 4-6: retrieval ---------------------------------------------------------------------------
def _memory() -> PromptMemory:
    memory = PromptMemory(size=4, length=2, width=3)
    with torch.no_grad():  # keys of different norms: retrieval must use the cosine, not the dot product
        memory.keys.copy_(torch.tensor([[1.0, 0, 0], [0, 5.0, 0], [0, 0, 0.5], [3.0, 3.0, 0]]))
        memory.prompts.copy_(torch.arange(24.0).view(4, 2, 3))
    return memory


def test_eq5_top_n_picks_the_most_cosine_similar_keys():
    memory = _memory()
    query = torch.tensor([[2.0, 1.0, 0.0], [0.1, 0.0, 1.0]])
    found = memory.retrieve(query, top_n=2)
    # row 0: cosines 0.894, 0.447, 0, 0.949 -> entries 3 then 0; row 1: 0.0995, 0, 0.995, 0.070 -> 2 then 0
    assert found.indices.tolist() == [[3, 0], [2, 0]]
    cos = F.cosine_similarity(query[:, None], memory.keys[None], dim=-1)
    expected = torch.stack([cos[0, [3, 0]], cos[1, [2, 0]]]).softmax(dim=-1)
    assert torch.allclose(found.weights, expected)
    assert torch.allclose(found.weights.sum(-1), torch.ones(2))
    assert found.weights[0, 0] > found.weights[0, 1] > 0.5 - 0.1


def test_eq6_generative_prompt_is_the_weighted_sum_of_the_selected_prompts():
    memory = _memory()
    found = memory.retrieve(torch.tensor([[2.0, 1.0, 0.0]]), top_n=2)
    w = found.weights[0]
    assert found.prompt.shape == (1, 2, 3)
    assert torch.allclose(found.prompt[0], w[0] * memory.prompts[3] + w[1] * memory.prompts[0])
    assert torch.allclose(memory.retrieve(torch.tensor([[0.0, 1.0, 0.0]]), top_n=1).prompt[0], memory.prompts[1])


def test_retrieval_gradients_reach_keys_and_selected_prompts_only():
    memory = _memory()
    memory.retrieve(torch.tensor([[2.0, 1.0, 0.0]]), top_n=2).prompt.sum().backward()
    assert memory.keys.grad[[0, 3]].abs().sum() > 0 and memory.keys.grad[[1, 2]].abs().sum() == 0
    assert memory.prompts.grad[[0, 3]].abs().sum() > 0 and memory.prompts.grad[[1, 2]].abs().sum() == 0


def test_initialisation_follows_the_released_code():
    torch.manual_seed(0)
    memory = PromptMemory(size=16, length=16, width=768)
    gain = math.sqrt(2 / (1 + 5))  # kaiming_normal_(a=sqrt(5))
    assert memory.prompts.std().item() == pytest.approx(gain / math.sqrt(16 * 768), rel=0.05)
    assert memory.keys.std().item() == pytest.approx(gain / math.sqrt(768), rel=0.05)
    bank = _bank(shared_dim=64, bottleneck_dim=4)
    assert bank.shared["0"].std().item() == pytest.approx(0.02, rel=0.3)
    assert bank.mapping["image"]["1"][2].bias.abs().sum() == 0


# ---- query pooling and padding -----------------------------------------------------------------------
def test_query_is_the_max_over_unpadded_tokens():
    tokens = torch.tensor([[[1.0, -2.0], [3.0, 0.0], [100.0, 100.0]], [[5.0, 5.0], [6.0, 7.0], [8.0, 9.0]]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    query = pooled_query(tokens, valid)
    assert query[0].tolist() == [3.0, 0.0]  # the padded token's 100s are skipped
    assert query[1].tolist() == [8.0, 9.0]  # every token masked (a masked-out missing modality): plain max


def test_visible_keys_reads_every_mask_layout():
    """The one mask reader every method uses: catches a reader that treats an additive mask as boolean (0 = hidden),
    reads the first query row of a causal mask (which sees only the first token), or fails on a missing mask."""
    padding = torch.tensor([[1, 1, 0], [1, 1, 1]])
    additive = (1.0 - padding[:, None, None, :].float()) * torch.finfo(torch.float32).min
    assert visible_keys(additive, 2, 3, torch.device("cpu")).equal(padding.bool())
    assert visible_keys(padding, 2, 3, torch.device("cpu")).equal(padding.bool())
    causal = torch.ones(3, 3, dtype=torch.bool).tril()[None, None] & padding.bool()[:, None, None, :]
    assert visible_keys(causal, 2, 3, torch.device("cpu")).equal(padding.bool())
    assert visible_keys(None, 2, 3, torch.device("cpu")).all()


# ---- eq. 7: shared prompts -------------------------------------------------------------------------
def test_eq7_shared_prompt_sums_the_present_modalities_rows_then_maps_it():
    bank = _bank(shared_dim=10, bottleneck_dim=5)
    present = torch.tensor([[True, True], [False, True], [True, False]])  # complete, missing_text, missing_image
    rows = bank.shared["1"]
    out = bank.shared_prompt(1, "image", present)
    g = bank.mapping["image"]["1"]
    assert out.shape == (3, L, 12)
    assert torch.allclose(out[0], g(rows[0] + rows[1]), atol=1e-6)
    assert torch.allclose(out[1], g(rows[1]), atol=1e-6)  # the code's shared_missing_t: the image row
    assert torch.allclose(out[2], g(rows[0]), atol=1e-6)  # the code's shared_missing_v: the text row
    assert [type(x).__name__ for x in g] == ["Linear", "GELU", "Linear"] and g[0].out_features == 5


def test_bottleneck_and_shared_width_defaults():
    bank = _bank()
    assert bank.shared["0"].shape == (2, L, 12)  # the widest stream
    assert bank.mapping["text"]["0"][0].out_features == 1  # 12 // 16, at least 1
    wide = MemPromptBank({"text": 512, "image": 768}, MemPromptConfig(**TINY))
    assert wide.mapping["text"]["0"][0].in_features == 768 and wide.mapping["text"]["0"][0].out_features == 48
    assert wide.mapping["text"]["0"][2].out_features == 512


# ---- switches (Table 2) and layers -----------------------------------------------------------------
@pytest.mark.parametrize(("options", "expected"), [
    ({}, {"memories", "shared", "mapping"}),
    ({"shared_prompts": False}, {"memories"}),
    ({"generative_prompts": False}, {"shared", "mapping"}),
])
def test_switches_change_the_parameter_set(options, expected):
    bank = _bank(**options)
    assert {n.split(".")[0] for n, _ in bank.named_parameters()} == expected


def test_one_memory_per_modality_per_prompted_layer():
    bank = _bank(prompt_layers=[3, 1])
    assert set(bank.memories["text"]) == {"1", "3"} and set(bank.shared) == {"1", "3"}
    assert bank.memories["image"]["3"].prompts.shape == (6, L, 12) and bank.memories["image"]["3"].keys.shape == (6, 12)


def test_generative_and_shared_layers_are_set_apart():
    """Fig. 3(c) varies the shared prompts' layers with the generative ones fixed and vice versa; the released code
    has gen_prompt_layers and shared_prompt_layers. Catches one layer list for both kinds (the tensors of a kind
    exist exactly at its own layers)."""
    bank = _bank(generative_layers=[0], shared_layers=[0, 1])
    assert set(bank.memories["text"]) == {"0"} and set(bank.shared) == {"0", "1"} and set(bank.mapping["image"]) == {
        "0", "1"}
    default = MemPromptConfig(**{**TINY, "prompt_layers": [1, 0], "shared_layers": [1, 0]})
    assert default.layer_lists() == {"generative": [0, 1], "shared": [0, 1]} and default.generative_layers is None


def test_each_layer_inserts_only_the_kinds_prompted_there(shapes_missing):
    """Layer 1 prompted with shared prompts only adds ``L`` tokens per modality (layer 0 adds ``2L``); catches a
    layer that inserts the generative prompt wherever any prompt is due (or a missing memory's KeyError)."""
    model = make_model("vilt", "memprompt", **{**TINY, "generative_layers": [0], "shared_layers": [0, 1]}).eval()
    batch = make_batch(shapes_missing["train"], "vilt", n=4)
    seen = _record(model, "encoder.layer")
    with torch.no_grad():
        model(**batch)
    n = seen["wrapper"][0].shape[1]
    assert seen["base"][0].shape[1] == n + 2 * 2 * L
    assert seen["base"][1].shape[1] == n + 2 * 2 * L + 2 * L


# ---- placement (eq. 2, Table 4) --------------------------------------------------------------------
def _record(model, layers_path: str) -> list:
    """Hook the first wrapped layer (its input and mask) and every base layer (the prompted sequence)."""
    seen = {"base": []}
    layers = model.backbone.get_submodule(layers_path)
    layers[0].register_forward_pre_hook(lambda _m, args: seen.update(wrapper=args))
    for layer in layers:
        layer.base_layer.register_forward_pre_hook(lambda _m, args: seen["base"].append(args[0]))
    return seen


def _expected_block(bank, layer, modality, hidden, valid, present):
    shared = bank.shared_prompt(layer, modality, present)
    generative = bank.memories[modality][str(layer)].retrieve(pooled_query(hidden, valid), bank.top_n).prompt
    return torch.cat([shared, generative], dim=1)


@pytest.mark.parametrize("placement", ["distributed", "pre-appended"])
def test_vilt_prompts_sit_where_the_placement_says(shapes_missing, placement):
    model = make_model("vilt", "memprompt", **TINY, placement=placement).eval()
    batch = make_batch(shapes_missing["train"], "vilt", n=6)
    seen = _record(model, "encoder.layer")
    with torch.no_grad():
        model(**batch)
    hidden, mask = seen["wrapper"][0], seen["wrapper"][1]
    text_len, n = batch["input_ids"].shape[1], hidden.shape[1]
    valid = visible_keys(mask, 6, n, hidden.device)
    assert valid[:, :text_len].equal(batch["attention_mask"].bool())
    present = model.patterns.present(batch["missing_type"])
    bank = _pooled_bank(model)
    with torch.no_grad():
        text = _expected_block(bank, 0, "text", hidden[:, :text_len], valid[:, :text_len], present)
        image = _expected_block(bank, 0, "image", hidden[:, text_len:], valid[:, text_len:], present)
    layer0, layer1 = seen["base"]
    b = 2 * L
    if placement == "distributed":
        expected = torch.cat([text, hidden[:, :text_len], image, hidden[:, text_len:]], dim=1)
    else:
        expected = torch.cat([text, image, hidden], dim=1)
    assert torch.allclose(layer0, expected, atol=1e-6)
    assert layer1.shape[1] == n + 2 * 2 * b  # two prompted layers, two modalities: prompts accumulate


def test_blocks_carry_what_the_previous_layer_made_of_them(shapes_missing):
    """Prompts accumulate as in the released code (``x = cat([..., prompts, x])`` on the block's output): before
    layer 1 each modality's block is ``[p_s^1, p_g^1 | layer 0's output at that modality's block]``. Mutation killed:
    carrying the pre-layer prompts (layer 0's ``[p_s^0, p_g^0]`` as inserted) instead of layer 0's output."""
    model = make_model("vilt", "memprompt", **TINY)
    _perturb(model)
    model.eval()
    batch = make_batch(shapes_missing["train"], "vilt", n=6)
    seen = _record(model, "encoder.layer")
    out0 = []
    model.backbone.encoder.layer[0].base_layer.register_forward_hook(lambda _m, _a, out: out0.append(out[0]))
    with torch.no_grad():
        model(**batch)
    text_len, b = batch["input_ids"].shape[1], 2 * L
    layer1, (first,) = seen["base"][1], out0
    image_start = 2 * b + text_len  # layer 1: [new text | carried text | text | new image | carried image | image]
    carried = torch.cat([layer1[:, b:image_start], layer1[:, image_start + b:]], dim=1)
    assert torch.equal(carried, first)
    assert not torch.allclose(first[:, :b], seen["base"][0][:, :b])


def test_placements_agree_on_a_bidirectional_stream(shapes_missing):
    """Self-attention is permutation-equivariant: on ViLT (positions added before layer 0) the two placements
    give the same logits up to float rounding."""
    batch = make_batch(shapes_missing["train"], "vilt", n=8)
    distributed = make_model("vilt", "memprompt", **TINY).eval()
    pre = make_model("vilt", "memprompt", **TINY, placement="pre-appended").eval()
    pre.load_state_dict(distributed.state_dict())
    torch.manual_seed(1)
    a = distributed(**batch).logits
    torch.manual_seed(1)
    assert torch.allclose(pre(**batch).logits, a, atol=1e-5)


def test_clip_prompts_go_in_front_of_each_tower(shapes_missing):
    model = make_model("clip", "memprompt", **TINY).eval()
    batch = make_batch(shapes_missing["train"], "clip", n=6)
    text_seen = _record(model, "text_model.encoder.layers")
    vision_seen = _record(model, "vision_model.encoder.layers")
    with torch.no_grad():
        model(**batch)
    present = model.patterns.present(batch["missing_type"])
    bank = _pooled_bank(model)
    for seen, modality in ((text_seen, "text"), (vision_seen, "image")):
        hidden, mask = seen["wrapper"][0], seen["wrapper"][1]
        valid = visible_keys(mask, 6, hidden.shape[1], hidden.device)
        with torch.no_grad():
            block = _expected_block(bank, 0, modality, hidden, valid, present)
        assert torch.allclose(seen["base"][0], torch.cat([block, hidden], dim=1), atol=1e-6)
        assert seen["base"][1].shape[1] == hidden.shape[1] + 4 * L
    text_mask = text_seen["wrapper"][1]  # padded batch: a 4-D causal mask with padding
    assert text_mask.dim() == 4
    assert visible_keys(text_mask, 6, text_mask.shape[-1], text_mask.device).equal(batch["attention_mask"].bool())


def test_prompts_start_at_the_first_prompted_layer(shapes_missing):
    model = make_model("vilt", "memprompt", **{**TINY, "prompt_layers": [1]}).eval()
    batch = make_batch(shapes_missing["train"], "vilt", n=4)
    seen = _record(model, "encoder.layer")
    with torch.no_grad():
        model(**batch)
    assert seen["base"][0].shape[1] == seen["wrapper"][0].shape[1]
    assert seen["base"][1].shape[1] == seen["wrapper"][0].shape[1] + 4 * L


# ---- losses, gradients, training -----------------------------------------------------------------
@pytest.mark.parametrize("backbone", BACKBONES)
def test_gradients_reach_keys_prompts_shared_and_bottleneck(shapes_missing, backbone):
    model = make_model(backbone, "memprompt", **TINY)
    batch = make_batch(shapes_missing["train"], backbone, n=12)
    out = model(**batch)
    assert out.aux_loss is None
    out.loss.backward()
    bank = _pooled_bank(model)
    for layer in ("0", "1"):
        for m in WIDTHS:
            for name in (f"memories.{m}.{layer}.keys", f"memories.{m}.{layer}.prompts", f"shared.{layer}",
                         f"mapping.{m}.{layer}.0.weight", f"mapping.{m}.{layer}.2.weight"):
                grad = bank.get_parameter(name).grad
                assert grad is not None and grad.abs().sum() > 0, name


def test_orthogonality_loss_is_optional_and_enters_the_loss(shapes_missing):
    model = make_model("vilt", "memprompt", **TINY, ortho_weight=0.5).eval()
    batch = make_batch(shapes_missing["train"], "vilt", n=8)
    out = model(**batch)
    assert out.aux_loss > 0
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, batch["labels"]) + out.aux_loss)
    assert squared_cosine(torch.eye(3)[None], torch.eye(3)[None]) == pytest.approx(1 / 3)


def test_trainer_learns_and_only_prompts_and_head_change(shapes_missing, tmp_path):
    from tests.test_training import _train

    model = make_model("vilt", "memprompt", **{**TINY, "prompt_length": 4})
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(("memprompt_bank" in n) or ("modules_to_save" in n) for n in trained)
    trainer = _train(model, shapes_missing, "vilt", tmp_path, epochs=6)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert 0 < model.diagnostics()["memprompt/default/usage_entropy"] <= 1


def test_mask_policy_queries_masked_out_modalities_without_nans(shapes_missing):
    model = make_model("vilt", "memprompt", **TINY).eval()
    batch = make_batch(shapes_missing["train"], "vilt", n=12, policy="mask")
    assert (batch["missing_type"] > 0).any()
    assert torch.isfinite(model(**batch).logits).all()


# ---- diagnostics -------------------------------------------------------------------------------
def test_usage_entropy():
    assert normalized_entropy(torch.tensor([3, 3, 3, 3])) == pytest.approx(1.0)
    assert normalized_entropy(torch.tensor([0, 7, 0, 0])) == 0.0
    assert normalized_entropy(torch.tensor([1, 1, 0, 0])) == pytest.approx(0.5)
    bank = _memory_bank_with_usage()
    assert bank.usage_entropy() == {"text/layer0": pytest.approx(0.5)}


def _memory_bank_with_usage() -> MemPromptBank:
    bank = _bank(memory_size=4, top_n=1, shared_prompts=False)
    with torch.no_grad():
        bank.memories["text"]["0"].keys.copy_(torch.eye(4, 8))
        bank.generative_prompt(0, "text", torch.eye(8)[[0, 0, 1, 1]])
    return bank


def test_diagnostics_come_from_the_last_forward(shapes_missing):
    model = make_model("vilt", "memprompt", **TINY).eval()
    assert model.diagnostics() == {}
    with torch.no_grad():
        model(**make_batch(shapes_missing["train"], "vilt", n=8))
    values = model.diagnostics()
    assert set(values) == {"memprompt/default/usage_entropy", *(f"memprompt/default/usage_entropy/{m}/layer{i}"
                                                                for m in WIDTHS for i in (0, 1))}
    assert all(0 < v <= 1 for v in values.values())


# ---- round trips -------------------------------------------------------------------------------
def _perturb(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)


def test_disable_adapter_restores_the_backbone(shapes_missing):
    from tests.test_training import _features

    base = make_model("clip", None).eval()
    batch = make_batch(shapes_missing["train"], "clip", n=8)
    reference = _features(base, batch)
    peft_model = get_peft_model(base, hf_missing.get_method_config("memprompt", **TINY))
    assert not torch.allclose(_features(base, batch), reference)
    with peft_model.disable_adapter():
        assert torch.equal(_features(base, batch), reference)


# ---- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(("options", "message"), [
    ({"top_n": 7}, r"top_n=7 retrieves more entries than the memory holds \(memory_size=6\)"),
    ({"prompt_layers": []}, "prompt_layers is empty"),
    ({"prompt_layers": [0, -1]}, "non-negative layer indices"),
    ({"prompt_layers": [1, 1]}, "lists a layer twice"),
    ({"shared_layers": []}, "shared_layers is empty"),
    ({"generative_layers": [2, 2]}, "generative_layers lists a layer twice"),
    ({"prompt_length": 0}, r"\{'prompt_length': 0\} must be at least 1"),
    ({"bottleneck_dim": 0}, r"\{'bottleneck_dim': 0\} must be at least 1"),
    ({"placement": "middle"}, r"placement must be one of \['distributed', 'pre-appended'\]"),
    ({"generative_prompts": False, "shared_prompts": False}, "no prompt at all"),
    ({"ortho_weight": 0.1, "shared_prompts": False}, "needs both"),
    ({"ortho_weight": -1.0}, "must be non-negative"),
])
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        hf_missing.get_method_config("memprompt", **{**TINY, **options})


def test_prompted_layer_beyond_depth_is_a_clear_error():
    with pytest.raises(ValueError, match=r"prompt_layers \[2, 3, 4, 5\] do not exist in the 2-layer joint stream "
                                         r"of this vilt backbone; pass layer indices 0..1"):
        make_model("vilt", "memprompt", prompt_length=4)
    with pytest.raises(ValueError, match=r"prompt_layers \[5\] do not exist in the 2-layer text stream"):
        make_model("clip", "memprompt", prompt_length=4, prompt_layers=[0, 5])
    with pytest.raises(ValueError, match=r"shared_layers \[3\] do not exist in the 2-layer joint stream"):
        make_model("vilt", "memprompt", **{**TINY, "shared_layers": [3]})


def test_layers_are_sorted_and_config_defaults_are_the_papers():
    config = MemPromptConfig(prompt_layers=[3, 0])
    assert config.prompt_layers == [0, 3]
    default = MemPromptConfig()
    assert (default.prompt_length, default.memory_size, default.top_n) == (16, 16, 5)
    assert default.prompt_layers == [0, 1, 2, 3, 4, 5] and default.placement == "distributed"
    assert default.ortho_weight == 0.0 and "memprompt" in hf_missing.list_methods()


@pytest.mark.parametrize(("dataset", "length", "lr"), [("mmimdb", 16, 5e-3), ("food101", 16, 5e-3),
                                                       ("hateful-memes", 4, 1e-3)])
def test_presets_hold_the_papers_numbers(dataset, length, lr, tmp_path):
    preset = hf_missing.load_preset(f"memprompt-{dataset}")
    config = preset.method_config
    assert (config.prompt_length, config.memory_size, config.top_n) == (length, 16, 5)
    assert config.prompt_layers == [0, 1, 2, 3, 4, 5] and config.placement == "distributed"
    args = preset.training_arguments(str(tmp_path), fp16=False)
    assert (args.learning_rate, args.weight_decay, args.num_train_epochs) == (lr, 2e-2, 20)
    assert (args.adam_beta1, args.adam_beta2) == (0.9, 0.98) and preset.effective_batch_size == 256
    assert preset.backbone == "dandelin/vilt-b32-mlm"
    demo = hf_missing.load_preset("memprompt-demo")
    assert demo.data.dataset == "emoji" and demo.training["use_cpu"] is True


def test_distributed_prompts_between_modalities_of_a_causal_stream_are_a_clear_error():
    """A causal stream holding two modalities cannot take a prompt between them (the tokens before it could not see
    it); an implementation that inserted it anyway would silently change what eq. 2 means, and the unfinished one
    raised NotImplementedError. It is a ValueError that names the fix."""
    model = make_model("clip", "memprompt", **TINY)
    layer = next(m for m in _layers(model) if m.stream.causal)
    ctx = ForwardContext(missing_type=torch.zeros(2, dtype=torch.long), present=torch.ones(2, 2, dtype=torch.bool),
                         modalities=("text", "image"),
                         spans={layer.stream.name: {"text": slice(0, 3), "image": slice(3, 6)}})
    run = MethodRun("default", model.peft_config["default"], None, ctx)
    blocks = [Block(m, torch.zeros(2, 1, 32), before=m) for m in ("text", "image")]
    with pytest.raises(ValueError, match=r"before 'image', which does not start the stream.*placement='pre-appended'"):
        layer._place(run, blocks)


def test_squared_cosine_is_over_token_pairs_of_each_sample():
    """Eq. 8's orthogonality: the mean, over samples and token pairs, of the squared cosine between the hidden
    vectors of a token of ``a`` and one of ``b``. Mutants killed (memprompt.layer.squared_cosine): either side
    normalised over the token axis (``dim`` dropped, ``+1`` or ``-2``) instead of the hidden one."""
    torch.manual_seed(0)
    a, b = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    expected = torch.stack([F.cosine_similarity(a[i, j], b[i, k], dim=0) ** 2
                            for i in range(2) for j in range(3) for k in range(5)]).mean()
    assert torch.allclose(squared_cosine(a, b), expected)


@pytest.mark.parametrize(("counts", "expected"), [
    ([5], 0.0), ([0, 0, 0], 0.0), ([1, 1], 1.0), ([2, 0], 0.0), ([1, 1, 0], math.log(2) / math.log(3)),
])
def test_normalized_entropy_edges(counts, expected):
    """Usage entropy of the memory entries, over log K: 0 for one entry or no use, 1 for even use. Mutants killed
    (memprompt.layer.normalized_entropy): the guard's ``or`` -> ``and``, ``< 2`` -> ``<= 2`` / ``< 3``, the empty
    sum tested against 1, the guarded value 1.0."""
    assert normalized_entropy(torch.tensor(counts)) == pytest.approx(expected)


# ---- mutation-testing guards ---------------------------------------------------------------------------
def _direct_run(model, spans: dict[str, slice], batch: int = 2) -> tuple[MemPromptLayer, MethodRun]:
    """Layer 0 of the joint ViLT stream and a run over a hand-made context with these ``spans``: what the layer's
    :meth:`~MemPromptLayer.blocks` gets in a forward, without the backbone around it."""
    layer = next(m for m in _layers(model) if m.index == 0)
    ctx = ForwardContext(missing_type=torch.tensor([0, 1])[:batch], present=torch.tensor([[True, True], [False, True]]),
                         modalities=("text", "image"), spans={layer.stream.name: spans})
    return layer, MethodRun("default", model.peft_config["default"], _pooled_bank(model), ctx)


def test_bottleneck_weights_start_at_the_released_codes_std():
    """G_m's two linear layers start N(0, 0.02^2) with zero biases, as the released code. Guards: init std 0.02
    dropped (mutmut memprompt _bottleneck_21), which leaves nn.init.normal_'s std 1."""
    torch.manual_seed(0)
    bank = _bank(shared_dim=256, bottleneck_dim=64)
    for linear in (bank.mapping["image"]["0"][0], bank.mapping["text"]["1"][2]):
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert linear.bias.abs().sum() == 0


def test_orthogonality_terms_of_every_modality_add_up_under_the_adapters_name():
    """The optional orthogonality loss at one layer: ``ortho_weight`` times the squared cosine between each
    modality's shared and generative prompt, summed over the modalities, under ``memprompt_orthogonality/<adapter>``.
    Guards (mutmut memprompt MemPromptLayer._new_prompts): the loss named None (_49), the weight divided by the
    cosine (_51), the generative prompt compared with itself (_56), a later modality's term replacing the earlier
    one's instead of adding to it (_59)."""
    model = make_model("vilt", "memprompt", **TINY, ortho_weight=0.5)
    layer, run = _direct_run(model, {"text": slice(0, 3), "image": slice(3, 7)})
    with torch.no_grad():
        blocks = layer.blocks(run, torch.randn(2, 7, 32), None, {})
    assert [b.name for b in blocks] == ["text", "image"]
    expected = sum(0.5 * squared_cosine(b.tokens[:, :L], b.tokens[:, L:]) for b in blocks)
    assert set(run.ctx.aux_losses) == {"memprompt_orthogonality/default"}
    torch.testing.assert_close(run.ctx.aux_losses["memprompt_orthogonality/default"], expected)
    assert 0 < expected < 0.5 * 2  # each squared cosine lies in [0, 1]


def test_pre_appended_blocks_follow_the_modalities_positions_not_their_names_order():
    """Pre-appended prompts go to the front in the order of the modalities' tokens, whatever order the stream lists
    its modalities in (here the image's one token comes before the text). Guards (mutmut memprompt
    MemPromptLayer.blocks): the sort key ``start or 0`` -> ``start and 0`` (_8, every key 0: the stream's order)
    and -> ``start or 1`` (_9, a span at 0 ties with one at 1)."""
    model = make_model("vilt", "memprompt", **TINY, placement="pre-appended")
    layer, run = _direct_run(model, {"text": slice(1, 4), "image": slice(0, 1)})
    assert layer.stream.modalities == ("text", "image")
    with torch.no_grad():
        blocks = layer.blocks(run, torch.randn(2, 4, 32), None, {})
    assert [b.name for b in blocks] == ["image", "text"] and all(b.before is None for b in blocks)
    assert [b.name for _, b in layer._place(run, blocks)] == ["image", "text"]
