"""REP (buffer replay prompting): each equation on small tensors, the ablation switches, training, round trips."""

import math
import re
import warnings
from types import SimpleNamespace

import pytest
import torch
from peft import get_peft_model
from torch.nn import functional as F

import hf_missing
from hf_missing.backbones import ClipBackbone, insert_blocks, remove_blocks
from hf_missing.context import ForwardContext
from hf_missing.methods.rep import RepBuffers, RepConfig, RepLayer
from hf_missing.methods.rep.layer import (
    BufferStates,
    RepRun,
    _private_init,
    init_embeddings,
    init_noise,
    squared_cosine,
)
from tests.conftest import BACKBONES, make_batch, make_model

TINY = {"prompt_length": 4, "prompt_depth": 2, "shared_dim": 8, "mlp_reduction": 4}
WIDTHS = {"text": 8, "image": 12}


def _buffers(widths=WIDTHS, **options) -> RepBuffers:
    config = RepConfig(**{**TINY, "prompt_depth": 3, **options})
    init = {m: torch.randn(d) for m, d in widths.items()}
    return RepBuffers(widths, config, init)


def _pooled(model, adapter="default") -> RepBuffers:
    return model.method_pool.rep_buffers[adapter]


def _capture_runs(monkeypatch) -> list:
    """The run (buffer states included) of every REP forward from now on."""
    runs, original = [], RepLayer.start_run

    def start_run(self, adapter, ctx):
        runs.append(original(self, adapter, ctx))
        return runs[-1]

    monkeypatch.setattr(RepLayer, "start_run", start_run)
    return runs


PATTERNS = torch.arange(3)  # one sample per missing pattern: complete, missing text, missing image


def test_eq7_private_update_is_the_residual_bypass():
    """Eq. 7 on the released chain (Z = the previous buffer); catches a missing LayerNorm, a swapped gate."""
    buffers = _buffers()
    states = buffers.chain(PATTERNS)
    for k, m in enumerate(buffers.modalities):
        rows = torch.where(buffers.presence[:, k], 0, 1)
        f0 = buffers.private[m][rows]
        assert torch.equal(states.private[m][0], f0)
        alpha = buffers.alpha(m)
        expected = alpha * buffers.G[m](F.layer_norm(f0, (WIDTHS[m],), buffers.norm[m].weight, buffers.norm[m].bias)) \
            + (1 - alpha) * f0
        assert torch.allclose(states.private[m][1], expected, atol=1e-6)
    g = buffers.G["image"]
    assert [type(x).__name__ for x in g] == ["Linear", "GELU", "Linear"] and g[0].out_features == 12 // 4


def test_eq8_shared_update_mixes_the_concatenated_private_buffers():
    """Eq. 8 on the chain: H of the concatenated new private buffers mixed with the previous shared one by eps_s;
    catches H fed the previous private buffers, a missing GELU, or a shared chain of the wrong length."""
    buffers = _buffers()
    states = buffers.chain(PATTERNS)
    concat = torch.cat([states.private["text"][2], states.private["image"][2]], dim=-1)
    eps = buffers.eps_s
    expected = eps * F.gelu(concat @ buffers.H[0].weight.T + buffers.H[0].bias) + (1 - eps) * states.shared[1]
    assert torch.allclose(states.shared[2], expected, atol=1e-6)
    assert states.shared[0].shape == (3, 4, 8) and len(states.shared) == 3
    projected = buffers.beta_s * buffers.theta["image"](states.shared[2])
    assert torch.allclose(buffers.slots(states, "image", 2)[:, :4], projected)


def test_eq9_replay_selects_each_samples_pattern():
    """Eq. 5 and 9: each sample gets its own pattern's buffers, scaled by beta after layer 0; catches a shared
    buffer that skips Theta_m, unscaled replay or one pattern's buffers for every sample."""
    buffers = _buffers()
    codes = torch.tensor([0, 2, 1, 0])
    states, by_pattern = buffers.chain(codes), buffers.chain(PATTERNS)
    out = buffers.slots(states, "text", 1)
    assert out.shape == (4, 8, 8)
    for b, c in enumerate(codes):
        assert torch.allclose(out[b, :4], buffers.beta_s * buffers.theta["text"](by_pattern.shared[1][c]))
        assert torch.allclose(out[b, 4:], buffers.beta_p * by_pattern.private["text"][1][c])
    first = buffers.slots(states, "image", 0)  # eq. 5: [Theta_m(F_s) | F_p^m]
    assert torch.equal(first[:, :4], buffers.theta["image"](buffers.shared[codes]))
    assert torch.equal(first[:, 4:], buffers.private["image"][torch.where(codes == 2, 1, 0)])


def test_private_rows_follow_presence_for_three_modalities():
    """K = 3: each pattern's private row is "present" or "missing" by that modality's presence; catches rows indexed
    by pattern code (only right for two modalities) or one row for every pattern."""
    widths = {"text": 8, "image": 8, "audio": 6}
    buffers = _buffers(widths)
    states = buffers.chain(torch.arange(7))
    assert len(buffers.presence) == 7 and states.shared[0].shape == (7, 4, 8)
    for k, m in enumerate(widths):
        for p in range(7):
            row = 0 if buffers.presence[p, k] else 1
            assert torch.equal(states.private[m][0][p], buffers.private[m][row])
    assert buffers.slots(states, "audio", 2).shape == (7, 8, 6)
    assert buffers.orthogonality_loss(states) > 0


@pytest.mark.parametrize("noise_type", ["gaussian", "uniform", "laplace"])
def test_eq10_11_dynamic_initialisation(noise_type):
    """Eq. 10-11: private buffers start at E_m plus eps_n-scaled noise, the shared buffer at the noise itself;
    catches a missing E_m, a missing eps_n or identical present/missing rows."""
    torch.manual_seed(0)
    config = RepConfig(**{**TINY, "prompt_length": 64}, noise_type=noise_type, noise_scale=0.2)
    init = {m: torch.randn(d) for m, d in WIDTHS.items()}
    buffers = RepBuffers(WIDTHS, config, init)
    for m in WIDTHS:
        offsets = (buffers.private[m] - init[m]).norm(dim=-1)
        assert offsets.pow(2).mean().sqrt().item() == pytest.approx(0.2, rel=0.1)
        assert not torch.equal(buffers.private[m][0], buffers.private[m][1])
    assert buffers.shared.norm(dim=-1).pow(2).mean().item() == pytest.approx(1.0, rel=0.1)


def test_noise_types_differ_in_distribution_at_the_same_variance():
    """Table 4: Gaussian, uniform and Laplace noise have the same variance (1/D per component) but different
    shapes; catches noise that is normalised to unit vectors (types differing in direction only) or types at
    different scales. Excess kurtosis: uniform -1.2, Gaussian 0, Laplace 3."""
    torch.manual_seed(0)
    kurtosis = {}
    for kind in ("uniform", "gaussian", "laplace"):
        noise = init_noise((200, 50, 64), kind)
        assert noise.var().item() == pytest.approx(1 / 64, rel=0.05)
        z = noise.flatten() / noise.std()
        kurtosis[kind] = (z.pow(4).mean() - 3).item()
    assert kurtosis["uniform"] == pytest.approx(-1.2, abs=0.15) and abs(kurtosis["gaussian"]) < 0.15
    assert kurtosis["laplace"] == pytest.approx(3.0, abs=0.5)


def test_static_initialisation_is_small_random():
    buffers = RepBuffers(WIDTHS, RepConfig(**TINY, dynamic_init=False), None)
    assert buffers.private["text"].std() < 0.05 and buffers.shared.abs().max() < 0.2


def test_clip_init_sources_are_eot_and_class_embeddings():
    """Eq. 10: each private buffer starts at its modality's pretrained token plus noise of scale noise_scale."""
    model = make_model("clip", "rep", **TINY)
    clip = model.backbone
    private = _pooled(model).private
    eot = clip.text_model.embeddings.token_embedding.weight[clip.config.text_config.eos_token_id]
    vision = clip.vision_model
    with torch.no_grad():
        cls = vision.pre_layrnorm(vision.embeddings.class_embedding + vision.embeddings.position_embedding.weight[0])
    for m, source in (("text", eot), ("image", cls)):
        offsets = (private[m] - source).norm(dim=-1)
        assert offsets.pow(2).mean().sqrt().item() == pytest.approx(0.2, rel=0.35)  # 2 x 4 tokens of 32 components
        assert (private[m] - source).abs().max() < 0.2


def test_eq6_orthogonality_on_small_tensors():
    """Eq. 6 recomputed by hand over every state: shared vs. private and private vs. private through Theta_m^T;
    catches raw inner products, a skipped state, or private buffers of different widths compared unprojected."""
    buffers = _buffers()
    states = buffers.chain(PATTERNS)
    expected = 0.0
    for j in range(3):
        for m in WIDTHS:
            projected = buffers.theta[m](states.shared[j])
            shared, private = F.normalize(projected, dim=-1), F.normalize(states.private[m][j], dim=-1)
            expected += (shared @ private.transpose(1, 2)).pow(2).mean()
        t = states.private["text"][j] @ buffers.theta["text"].weight
        i = states.private["image"][j] @ buffers.theta["image"].weight
        expected += (F.normalize(t, dim=-1) @ F.normalize(i, dim=-1).transpose(1, 2)).pow(2).mean()
    assert torch.allclose(buffers.orthogonality_loss(states), expected)
    assert squared_cosine(torch.eye(3)[None], torch.eye(3)[None]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("source", ["features", "parameters"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_orthogonality_term_is_in_the_loss_and_gradients_reach_every_tensor(shapes_missing, backbone, source,
                                                                               monkeypatch):
    """Eq. 6 over every state of the forward enters the loss once; catches a term counted twice, a state left out
    (feature states are computed layer by layer) and a buffer tensor that gets no gradient."""
    runs = _capture_runs(monkeypatch)
    model = make_model(backbone, "rep", **TINY, ortho_weight=0.5, buffer_source=source)
    batch = make_batch(shapes_missing["train"], backbone, n=12)
    out = model(**batch)
    buffers, (run,) = _pooled(model), runs
    assert len(run.states.shared) == len(run.states.private["text"]) == 2
    assert torch.allclose(out.aux_loss, 0.5 * buffers.orthogonality_loss(run.states))
    assert torch.allclose(out.loss, F.cross_entropy(out.logits, batch["labels"]) + out.aux_loss)
    out.loss.backward()
    for name in ("private.text", "private.image", "shared", "alpha_logit.text", "alpha_logit.image", "beta_p_logit",
                 "beta_s_logit", "eps_s_logit", "G.text.0.weight", "H.0.weight", "theta.image.weight"):
        grad = buffers.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.parametrize(("options", "present", "absent"), [
    ({}, {"private", "shared", "theta", "G", "H", "alpha_logit", "beta_p_logit", "beta_s_logit", "eps_s_logit"}, set()),
    ({"replay": False}, {"private", "shared", "theta"},
     {"G", "H", "alpha_logit", "beta_p_logit", "beta_s_logit", "eps_s_logit"}),
    ({"dual_buffers": False}, {"private", "G", "alpha_logit", "beta_p_logit"},
     {"shared", "theta", "H", "eps_s_logit", "beta_s_logit"}),
    ({"use_private_buffer": False}, {"shared", "theta", "H", "eps_s_logit", "beta_s_logit"},
     {"private", "G", "alpha_logit", "beta_p_logit"}),
])
def test_ablation_switches_change_the_parameter_set(options, present, absent):
    names = {n.split(".")[0] for n, _ in _buffers(**options).named_parameters()}
    assert present <= names and not (absent & names)


def test_without_private_buffer_the_shared_chain_updates_itself():
    """Table 4 "w/o private buffer" on the released chain: H updates the shared buffer from itself; catches an H
    that expects the (absent) private concatenation, or slots that still include a private part."""
    buffers = _buffers(use_private_buffer=False, buffer_source="parameters")
    states = buffers.chain(PATTERNS)
    expected = buffers.eps_s * buffers.H(states.shared[0]) + (1 - buffers.eps_s) * states.shared[0]
    assert torch.allclose(states.shared[1], expected) and states.private == {}
    assert buffers.slots(states, "text", 0).shape == (3, 4, 8)


def test_insert_blocks_places_slots_before_each_span_and_restores():
    hidden = torch.arange(5.0)[None, :, None].expand(2, 5, 3)
    mask = torch.zeros(2, 1, 1, 5)
    mask[1, ..., 2] = -1e9
    a, b = torch.full((2, 2, 3), -1.0), torch.full((2, 1, 3), -2.0)
    joined, new_mask, where = insert_blocks(hidden, mask, [(0, a), (3, b)])
    assert joined[0, :, 0].tolist() == [-1, -1, 0, 1, 2, -2, 3, 4]
    assert new_mask[1, 0, 0].tolist() == [0, 0, 0, 0, -1e9, 0, 0, 0]
    blocks, rest = remove_blocks(joined, where)
    assert torch.equal(rest, hidden) and torch.equal(blocks[0], a) and torch.equal(blocks[1], b)
    square = torch.zeros(1, 1, 5, 5)
    assert insert_blocks(hidden[:1], square, [(3, b[:1])])[1].shape == (1, 1, 6, 6)


def test_slots_replayed_before_layer_one_are_carried_plus_buffers(shapes_missing, monkeypatch):
    """Eq. 9 before layer 1: the slots are layer 0's slot outputs plus the replayed buffers, before each modality's
    span; catches replay that replaces the carried slots, or buffers placed at the wrong span."""
    runs = _capture_runs(monkeypatch)
    model = make_model("vilt", "rep", **TINY).eval()
    batch = make_batch(shapes_missing["train"], "vilt", n=6)
    seen = []
    for layer in model.backbone.encoder.layer:
        layer.base_layer.register_forward_hook(lambda _m, args, out: seen.append((args[0], out[0])))
    torch.manual_seed(1)
    model(**batch)
    buffers, states = _pooled(model), runs[0].states
    text_len = batch["input_ids"].shape[1]
    (_, out0), (in1, _) = seen
    for modality, start in (("text", 0), ("image", text_len + 8)):
        expected = out0[:, start:start + 8] + buffers.slots(states, modality, 1)
        assert torch.allclose(in1[:, start:start + 8], expected, atol=1e-6)
    assert in1.shape[1] == out0.shape[1] == text_len + 16 + (batch["pixel_values"].shape[-1] // 6) ** 2 + 1


def test_disable_adapter_restores_the_backbone(shapes_missing):
    base = make_model("clip", None).eval()
    batch = make_batch(shapes_missing["train"], "clip", n=8)
    from tests.test_training import _features

    reference = _features(base, batch)
    peft_model = get_peft_model(base, hf_missing.get_method_config("rep", **TINY))
    assert not torch.allclose(_features(base, batch), reference)
    with peft_model.disable_adapter():
        assert torch.equal(_features(base, batch), reference)


def test_diagnostics_report_the_gates():
    values = make_model("vilt", "rep", **TINY).diagnostics()
    assert values["rep/default/alpha_text"] == pytest.approx(0.5) and "rep/default/beta_s" in values
    assert make_model("vilt", "map").diagnostics() == {}


def test_too_deep_buffer_is_a_clear_error():
    with pytest.raises(ValueError, match=r"prompt_depth=6 exceeds the 2 layers .* prompt_depth <= 2"):
        make_model("vilt", "rep", prompt_length=4)


def test_too_long_buffer_overflows_the_text_position_budget():
    with pytest.raises(ValueError, match=r"REP inserts 20 slots next to each modality \(prompt_length=10 for each of "
                                         r"its 2 buffers\), more than the 16 text positions.*prompt_length <= 8"):
        make_model("clip", "rep", prompt_length=10, prompt_depth=2)
    assert make_model("clip", "rep", prompt_length=8, prompt_depth=2) is not None


def test_missing_init_source_is_a_clear_error(monkeypatch):
    """Catches REP reaching for an embedding the backbone cannot give (an AttributeError deep in injection) instead
    of naming the missing capability and the dynamic_init=False fix."""
    def refuse(self, modality):
        raise ValueError(f"clip has no pretrained embedding for {modality!r}.")

    monkeypatch.setattr(ClipBackbone, "pretrained_token_embedding", refuse)
    with pytest.raises(ValueError, match=r"no pretrained embedding for 'text'.*dynamic_init=False"):
        make_model("clip", "rep", **TINY)
    assert make_model("clip", "rep", **TINY, dynamic_init=False) is not None
    toy = SimpleNamespace(model_type="toy", modalities=("text", "image"))  # a backbone without the mixin
    with pytest.raises(ValueError, match=r"REP's dynamic initialisation \(eq. 10\) needs PretrainedTokens .*toy.*"
                                         r"dynamic_init=False"):
        init_embeddings(toy)


def test_contradictory_switches_are_rejected():
    with pytest.raises(ValueError, match="no buffer at all"):
        RepConfig(dual_buffers=False, use_private_buffer=False)
    with pytest.raises(ValueError, match="noise_type must be one of"):
        RepConfig(noise_type="pink")


def test_clip_image_init_is_the_class_token_entering_the_encoder():
    """Catches E_image (eq. 10) taken from the raw class embedding: it must equal the class token as the vision
    encoder receives it (plus its position embedding, through pre_layrnorm), whatever the image."""
    model = make_model("clip", None)
    vision = model.backbone.vision_model
    with torch.no_grad():
        entering = vision.pre_layrnorm(vision.embeddings(torch.randn(2, 3, 30, 30)))[:, 0]
    expected = model.interface.pretrained_token_embedding("image")
    torch.testing.assert_close(entering, expected.expand(2, -1))


def test_orthogonality_without_a_shared_buffer_on_different_widths_warns():
    """Catches the silent zero: without the shared buffer, private buffers of
    different widths cannot be compared, and the user must be told the loss is 0 rather than find out later."""
    from hf_missing.methods.rep.model import check_fits

    config = RepConfig(dual_buffers=False, prompt_length=2, prompt_depth=2)
    interface = SimpleNamespace(streams=(), max_text_positions=lambda: None, model_type="toy",
                                modalities=("text", "image"),
                                stream_of=lambda m: SimpleNamespace(hidden_size=32 if m == "text" else 48))
    with pytest.warns(UserWarning, match="the loss is 0"):
        check_fits(interface, config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_fits(interface, RepConfig(dual_buffers=False, prompt_length=2, prompt_depth=2, ortho_weight=0.0))


def _deep_vilt_rep(**options) -> hf_missing.MissingModalityForClassification:
    """REP on a tiny 4-layer ViLT (the shared tiny backbones have 2 layers: too shallow to see replay stop at d)."""
    from transformers import ViltConfig, ViltModel

    from hf_missing.data.synthetic import IMAGE_SIZE, tiny_tokenizer

    torch.manual_seed(0)
    config = ViltConfig(vocab_size=len(tiny_tokenizer()), hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=37, image_size=IMAGE_SIZE, patch_size=6, max_position_embeddings=16,
                        initializer_range=0.2)
    model = hf_missing.MissingModalityForClassification.from_backbone(ViltModel(config), num_labels=4)
    model.add_adapter(hf_missing.get_method_config("rep", **{**TINY, **options}))
    return model.eval()


def _layer_io(model, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
    seen = []
    for layer in model.backbone.encoder.layer:
        layer.base_layer.register_forward_hook(lambda _m, args, out: seen.append((args[0], out[0])))
    model(**batch)
    return seen


@pytest.mark.parametrize("source", ["features", "parameters"])
@pytest.mark.parametrize("replay", [True, False])
def test_replay_reaches_every_layer_below_d_and_no_further(shapes_missing, replay, source, monkeypatch):
    """Eq. 9 at every layer: before layer j (1 <= j < d) the slots are the previous layer's slot outputs plus the
    replayed buffers; from d on (and everywhere with replay=False) they only flow forward. Catches replay at
    layer 1 only, replay beyond d, and replay=False dropping the layer-0 buffers (eq. 5)."""
    runs = _capture_runs(monkeypatch)
    model = _deep_vilt_rep(prompt_depth=3, replay=replay, buffer_source=source)
    batch = make_batch(shapes_missing["train"], "vilt", n=6)
    seen = _layer_io(model, batch)
    buffers, states = _pooled(model), runs[0].states
    text_len, width = batch["input_ids"].shape[1], 8
    spans = {"text": slice(0, width), "image": slice(text_len + width, text_len + 2 * width)}
    for modality, span in spans.items():
        torch.testing.assert_close(seen[0][0][:, span], buffers.slots(states, modality, 0))
        for j in range(1, 4):
            replayed = buffers.slots(states, modality, j) if replay and j < 3 else 0
            torch.testing.assert_close(seen[j][0][:, span], seen[j - 1][1][:, span] + replayed)


@pytest.mark.parametrize("switch", [{"dynamic_init": False}, {"dual_buffers": False}, {"use_private_buffer": False},
                                    {"replay": False}, {"noise_type": "uniform"}, {"noise_type": "laplace"},
                                    {"buffer_source": "parameters"}, {"init_source": "sample"}],
                         ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_each_ablation_row_runs_end_to_end_and_differs_from_full_rep(shapes_missing, switch):
    """Tables 3-4: every ablation row trains a step and predicts differently from full REP built from the same
    seed; catches a switch that is accepted but ignored (its logits would equal the full model's)."""
    batch = make_batch(shapes_missing["train"], "vilt", n=6)

    def logits(**options):
        torch.manual_seed(0)
        model = make_model("vilt", "rep", **TINY, **options)
        model.train()
        model(**batch).loss.backward()
        return model.eval()(**batch).logits.detach()

    assert not torch.allclose(logits(**switch), logits())


def test_feature_buffers_cache_the_slot_outputs_of_the_previous_layer(shapes_missing, monkeypatch):
    """Eq. 7-8 with Z_p^m[j] = the outputs of m's private slots after layer j-1, i.e. the sample's own features
    at that depth. Catches the released chain (Z = the previous buffer), features read off the shared slots or
    another modality's slots, and a shared update that mixes anything but the new private buffers."""
    runs = _capture_runs(monkeypatch)
    model = _deep_vilt_rep(prompt_depth=3)
    batch = make_batch(shapes_missing["train"], "vilt", n=6)
    seen = _layer_io(model, batch)
    buffers, states = _pooled(model), runs[0].states
    text_len, width = batch["input_ids"].shape[1], 8
    private = {"text": slice(4, width), "image": slice(text_len + width + 4, text_len + 2 * width)}
    for j in (1, 2):
        for m, span in private.items():
            z, prev, alpha = seen[j - 1][1][:, span], states.private[m][j - 1], buffers.alpha(m)
            expected = alpha * buffers.G[m](buffers.norm[m](z)) + (1 - alpha) * prev
            torch.testing.assert_close(states.private[m][j], expected)
        concat = torch.cat([states.private["text"][j], states.private["image"][j]], dim=-1)
        expected = buffers.eps_s * buffers.H(concat) + (1 - buffers.eps_s) * states.shared[j - 1]
        torch.testing.assert_close(states.shared[j], expected)


@pytest.mark.parametrize("source", ["features", "parameters"])
def test_a_samples_buffers_change_when_and_only_when_its_own_inputs_change(shapes, source, monkeypatch):
    """Feature buffers hold each sample's own features: changing sample 0's text changes its buffers from state 1
    on and leaves every other sample's untouched; the released chain gives every sample of a pattern the same
    buffers whatever its input. Catches buffers that ignore the input, and features that leak across the batch."""
    runs = _capture_runs(monkeypatch)
    model = _deep_vilt_rep(prompt_depth=3, buffer_source=source)
    complete = hf_missing.simulate_missing(shapes["train"].select(range(6)), rate=0.0, split="train")
    batch = make_batch(complete, "vilt", n=6)  # complete: sample 0's text is really read
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    changed["input_ids"][0, 1] = (changed["input_ids"][0, 1] + 1) % model.backbone.config.vocab_size
    with torch.no_grad():
        model(**batch), model(**changed)
    before, after = runs[0].states, runs[1].states
    for j in range(3):
        for m in ("text", "image"):
            a, b = before.private[m][j], after.private[m][j]
            torch.testing.assert_close(a[1:], b[1:], rtol=0, atol=1e-6)
            moved = (a[0] - b[0]).abs().max().item()
            assert (moved > 1e-4) == (source == "features" and j > 0), (m, j, moved)
        if source == "parameters":
            torch.testing.assert_close(before.private["text"][j][0], before.private["text"][j][1])


def test_sample_aware_initialisation_starts_from_the_samples_embedded_tokens(shapes_missing, monkeypatch):
    """Eq. 10 with E_m from the sample (section 3.5): F_p^m[0] = its pattern's learned row + the mean of the
    sample's visible tokens of m entering layer 0. Catches padding counted in the mean, the pretrained token used
    instead, and another sample's (or modality's) tokens."""
    runs = _capture_runs(monkeypatch)
    model = _deep_vilt_rep(prompt_depth=2, init_source="sample")
    batch = make_batch(shapes_missing["train"], "vilt", n=6)
    entering = []
    model.backbone.encoder.layer[0].register_forward_pre_hook(lambda _m, args: entering.append(args[0]))
    with torch.no_grad():
        model(**batch)
    buffers, states, codes = _pooled(model), runs[0].states, batch["missing_type"]
    text_len, hidden = batch["input_ids"].shape[1], entering[0]
    weights = batch["attention_mask"][..., None].float()
    means = {"text": (hidden[:, :text_len] * weights).sum(1) / weights.sum(1), "image": hidden[:, text_len:].mean(1)}
    for k, m in enumerate(("text", "image")):
        rows = torch.where(buffers.presence[codes, k], 0, 1)
        torch.testing.assert_close(states.private[m][0], buffers.private[m][rows] + means[m][:, None])
    assert buffers.private["text"].norm(dim=-1).mean() < 0.5  # the learned part starts at eps_n * zeta only


def test_feature_buffers_need_every_stream_at_the_same_depth(shapes_missing, monkeypatch):
    """CLIP runs its towers one after the other unless asked otherwise; feature buffers make the model ask for
    lockstep (the released chain does not need it), and without it the error names the fix instead of replaying
    stale or missing features."""
    from hf_missing.methods.base import needs_lockstep

    model = make_model("clip", "rep", **TINY).eval()
    batch = make_batch(shapes_missing["train"], "clip", n=4)
    assert needs_lockstep(model.interface)
    assert not needs_lockstep(make_model("clip", "rep", **TINY, buffer_source="parameters").interface)
    model(**batch)  # the towers run in step
    monkeypatch.setattr(hf_missing.modeling, "needs_lockstep", lambda interface: False)
    with pytest.raises(RuntimeError, match=r"layer 0 before layer 1 of the text stream.*buffer_source='parameters'"):
        model(**batch)


def test_gates_stay_in_the_unit_interval_so_the_buffer_chain_cannot_blow_up():
    """Stability: alpha_m, eps_s and beta are sigmoids of their learned logits, so however far training pushes a
    logit, eq. 7-8 stay convex mixes and the buffers keep the scale of what they mix. Catches unbounded scalar gates:
    at alpha = 3 (reached in 250 AdamW steps of lr 1e-2) the chain multiplies the buffer by 1 - alpha = -2 per
    layer, 2^5 = 32 times its norm at d = 6, which drowns the tokens it is replayed beside."""
    buffers = _buffers(prompt_depth=6, buffer_source="parameters")
    with torch.no_grad():
        for logit in (*buffers.alpha_logit.values(), buffers.eps_s_logit, buffers.beta_p_logit, buffers.beta_s_logit):
            logit.fill_(-1e4)  # as far as training could push it: alpha -> 0, 1 - alpha -> 1
    states = buffers.chain(PATTERNS)
    for m in WIDTHS:
        assert 0 <= buffers.alpha(m).item() <= 1
        first, last = states.private[m][0].norm(dim=-1), states.private[m][-1].norm(dim=-1)
        assert last.max() <= first.max() * 1.01
    assert all(0 <= v <= 1 for v in _buffers().diagnostics().values())


def test_clip_text_buffers_read_the_text(shapes, monkeypatch):
    """In CLIP's causal text tower the slots sit in front of the text and attend only to each other, so slot outputs
    alone carry no text: Z_text adds the mean of the text's token outputs. Catches feature buffers that on CLIP
    cache the image only (a text swap leaving the text buffers unchanged), and leaks across the batch."""
    runs = _capture_runs(monkeypatch)
    model = make_model("clip", "rep", **TINY).eval()
    complete = hf_missing.simulate_missing(shapes["train"].select(range(4)), rate=0.0, split="train")
    batch = make_batch(complete, "clip", n=4)
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    changed["input_ids"][0, 1] = (changed["input_ids"][0, 1] + 1) % model.backbone.config.text_config.vocab_size
    with torch.no_grad():
        model(**batch), model(**changed)
    before, after = runs[0].states.private["text"][1], runs[1].states.private["text"][1]
    assert (before[0] - after[0]).abs().max() > 1e-4
    torch.testing.assert_close(before[1:], after[1:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("options", [
    {"buffer_source": "parameters", "init_source": "sample"},
    {"buffer_source": "parameters", "init_source": "sample", "dual_buffers": False},
    {"use_private_buffer": False}, {"replay": False, "init_source": "sample"}, {"prompt_depth": 1},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_every_configuration_trains_every_parameter_it_builds(shapes_missing, backbone, options):
    """Each combination runs a training step on both backbone kinds and every REP tensor it builds gets a gradient.
    Catches states built during the forward without lockstep on CLIP (a KeyError when the text tower outruns the
    image's first state), and gates, G and H built for a depth-1 buffer that never replays (unused parameters
    break DDP and inflate the budget)."""
    model = make_model(backbone, "rep", **{**TINY, **options})
    batch = make_batch(shapes_missing["train"], backbone, n=6)
    model(**batch).loss.backward()
    idle = [n for n, p in _pooled(model).named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not idle


@pytest.mark.parametrize(("options", "keys"), [
    ({}, {"alpha_text", "alpha_image", "beta_p", "eps_s", "beta_s"}),
    ({"dual_buffers": False}, {"alpha_text", "alpha_image", "beta_p"}),
    ({"use_private_buffer": False}, {"eps_s", "beta_s"}),
    ({"replay": False}, set()),
])
def test_diagnostics_report_each_gate_the_buffers_hold(options, keys):
    """The logged gates: alpha_m and beta_p with private buffers, eps_s and beta_s with a shared one, none without
    replay; each the gate's current value. Mutants killed (RepBuffers.diagnostics): the alphas reported without
    private buffers; the "beta_p" key renamed; eps_s left out."""
    buffers = _buffers(**options)
    values = buffers.diagnostics()
    assert set(values) == keys
    if "beta_p" in keys:
        assert values["beta_p"] == pytest.approx(buffers.beta_p.item())
    if "eps_s" in keys:
        assert values["eps_s"] == pytest.approx(buffers.eps_s.item())


# ---- mutation-testing guards ---------------------------------------------------------------------------
def test_the_chosen_noise_type_initialises_both_buffers():
    """Table 4's noise type reaches eq. 10 and eq. 11: uniform noise stays within sqrt(3 / D) per component (eps_n
    times that for the private offsets), which Laplace noise of the same variance exceeds about 9% of the time.
    Guards: the noise type replaced by None or by the device (mutmut rep _private_init_17, _private_init_20,
    _shared_init_10), both of which fall through to Laplace noise."""
    torch.manual_seed(0)
    config = RepConfig(**{**TINY, "prompt_length": 64}, noise_type="uniform", noise_scale=0.2)
    init = {m: torch.randn(d) for m, d in WIDTHS.items()}
    buffers = RepBuffers(WIDTHS, config, init)
    for m, d in WIDTHS.items():
        largest, bound = (buffers.private[m] - init[m]).abs().max().item(), 0.2 * math.sqrt(3 / d)
        assert 0.9 * bound < largest <= bound + 1e-6, m
    largest, bound = buffers.shared.abs().max().item(), math.sqrt(3 / 8)
    assert 0.9 * bound < largest <= bound + 1e-6
    sample = _private_init(8, 64, RepConfig(**TINY, noise_type="uniform", init_source="sample"), None)
    assert sample.abs().max() <= 0.2 * math.sqrt(3 / 8) + 1e-6  # E_m from the sample: the noise alone


def test_private_buffer_starts_with_a_present_and_a_missing_row_at_e_plus_eps_n_zeta():
    """Eq. 10: ``F_p^m[0] = E_m + eps_n * zeta`` with the noise drawn as :func:`init_noise` draws it, for each of
    the two rows (modality present, missing); static initialisation has the same two rows. Guards: ``+ noise`` ->
    ``- noise`` (mutmut rep _private_init_26), three static rows instead of two (_private_init_9)."""
    config, embedding = RepConfig(**TINY, noise_type="gaussian", noise_scale=0.2), torch.randn(8)
    torch.manual_seed(5)
    start = _private_init(8, 4, config, embedding)
    torch.manual_seed(5)
    torch.testing.assert_close(start, embedding + 0.2 * init_noise((2, 4, 8), "gaussian"))
    assert _private_init(8, 4, RepConfig(**TINY, dynamic_init=False), None).shape == (2, 4, 8)
    assert RepBuffers(WIDTHS, RepConfig(**TINY, dynamic_init=False), None).private["image"].shape == (2, 4, 12)


def test_laplace_noise_is_the_inverse_cdf_of_its_uniform_draw_and_stays_finite(monkeypatch):
    """Laplace(0, 1/sqrt 2) by inverse CDF: ``u ~ U(-1/2, 1/2)`` maps to ``-b sign(u) log(1 - 2|u|)``, increasing in
    u, and the draw ``u = -1/2`` (torch.rand returning 0) stays finite through the clamp. Guards: the sign flipped
    (mutmut rep init_noise_34), the clamp's bound ``0.5 - 1e-7`` -> ``0.5 + 1e-7`` or ``1.5 - 1e-7``
    (init_noise_41, init_noise_42), which let ``log(0)`` through."""
    shape = (4, 6, 16)
    torch.manual_seed(3)
    u = torch.rand(shape) - 0.5
    torch.manual_seed(3)
    noise = init_noise(shape, "laplace")
    torch.testing.assert_close(noise, -torch.sign(u) * torch.log1p(-2 * u.abs()) / math.sqrt(2) / math.sqrt(16))
    assert torch.equal(noise > 0, u > 0)
    monkeypatch.setattr(torch, "rand", lambda size, device=None: torch.zeros(size, device=device))
    edge = init_noise(shape, "laplace")
    assert torch.isfinite(edge).all() and (edge < -2).all()


def test_g_bottleneck_is_the_width_over_mlp_reduction_and_at_least_one():
    """G_m of eq. 7 narrows D_m to D_m // mlp_reduction, at least 1. Guards: the floor 1 -> 2 (mutmut rep
    RepBuffers._build_replay_15)."""
    assert [_buffers(mlp_reduction=4).G[m][0].out_features for m in WIDTHS] == [2, 3]
    narrow = _buffers(mlp_reduction=16)
    assert [narrow.G[m][0].out_features for m in WIDTHS] == [1, 1] and narrow.G["image"][2].out_features == 12


def test_initial_states_add_each_samples_embedding_in_the_buffers_dtype():
    """Eq. 10 with E_m from the sample: state 0 is the pattern's row plus the sample's embedding, cast to the
    buffer's dtype (a float64 embedding does not turn the state into float64). Guards (mutmut rep RepBuffers):
    the embeddings ignored by initial_states (initial_states_9, _12, _14), the cast dropped (initial_private_16)."""
    buffers, codes = _buffers(), torch.tensor([0, 1, 2, 0])
    embedded = {m: torch.randn(4, d, dtype=torch.float64) for m, d in WIDTHS.items()}
    states, plain = buffers.initial_states(codes, embedded), buffers.initial_states(codes)
    for m in WIDTHS:
        assert states.private[m][0].dtype == torch.float32
        torch.testing.assert_close(states.private[m][0], plain.private[m][0] + embedded[m][:, None].float())


def test_private_buffers_alone_chain_without_a_shared_state():
    """Table 4 "w/o shared buffer" on the released chain: state 0 and every update hold private buffers only.
    Guards: initial_states reading the shared buffer whether or not there is one (mutmut rep
    RepBuffers.initial_states_4, an AttributeError)."""
    buffers = _buffers(dual_buffers=False, buffer_source="parameters")
    states = buffers.chain(PATTERNS)
    assert states.shared == [] and [len(states.private[m]) for m in WIDTHS] == [3, 3]
    assert buffers.slots(states, "text", 2).shape == (3, 4, 8)


def test_orthogonality_loss_of_no_state_is_a_zero_tensor():
    """Eq. 6 over no state is a tensor 0 (callers add it, call .item() or backward on it). Guards: the sum's start
    value dropped (mutmut rep RepBuffers.orthogonality_loss_9), which returns the int 0."""
    loss = _buffers().orthogonality_loss(BufferStates())
    assert isinstance(loss, torch.Tensor) and loss.item() == 0


def test_parameter_buffers_update_from_the_previous_state_not_the_stream(shapes_missing, monkeypatch):
    """buffer_source="parameters" with E_m from the sample: states 1.. follow eq. 7-8 from the previous state
    (the released chain), never from the slots' outputs. Guards: the slot features read whatever buffer_source
    says (mutmut rep RepLayer._advance_4)."""
    runs = _capture_runs(monkeypatch)
    model = _deep_vilt_rep(prompt_depth=3, buffer_source="parameters", init_source="sample")
    with torch.no_grad():
        model(**make_batch(shapes_missing["train"], "vilt", n=6))
    buffers, states = _pooled(model), runs[0].states
    for j in (1, 2):
        expected = BufferStates(private={m: [states.private[m][j - 1]] for m in WIDTHS}, shared=[states.shared[j - 1]])
        with torch.no_grad():
            buffers.update(expected)
        for m in WIDTHS:
            torch.testing.assert_close(states.private[m][j], expected.private[m][1])
        torch.testing.assert_close(states.shared[j], expected.shared[1])


def test_orthogonality_loss_is_named_after_the_adapter_and_absent_at_weight_zero(shapes_missing, monkeypatch):
    """Eq. 6 enters the forward's auxiliary losses as ``rep_orthogonality/<adapter>``; ortho_weight=0 (the
    ablation without it) adds no term at all. Guards: the run made with adapter None (mutmut rep
    RepLayer.start_run_18), ``weight > 0`` -> ``weight >= 0`` (RepLayer._count_orthogonality_4)."""
    runs = _capture_runs(monkeypatch)
    batch = make_batch(shapes_missing["train"], "vilt", n=4)
    outputs = [make_model("vilt", "rep", **TINY, ortho_weight=w)(**batch) for w in (0.5, 0.0)]
    assert set(runs[0].ctx.aux_losses) == {"rep_orthogonality/default"} and outputs[0].aux_loss > 0
    assert runs[1].ctx.aux_losses == {} and outputs[1].aux_loss is None


def test_feature_buffers_refuse_a_stream_that_ran_to_another_depth():
    """Feature buffers read every stream's layer j-1: a stream whose last layer is another one (here CLIP's text
    tower ran ahead to layer 1) is an error with the fix, not stale features. Guards (mutmut rep RepLayer._features):
    ``outputs is None or <other depth>`` -> ``and`` (_features_9); the fix's text changed (_features_14, _15)."""
    model = make_model("clip", "rep", **TINY)
    layer = next(m for m in model.modules() if isinstance(m, RepLayer) and m.stream.name == "vision" and m.index == 1)
    ctx = ForwardContext(missing_type=torch.zeros(2, dtype=torch.long), present=torch.ones(2, 2, dtype=torch.bool),
                         modalities=("text", "image"))
    run = RepRun("default", model.peft_config["default"], _pooled(model), ctx, states=BufferStates())
    run.carried["text"], run.depth = {"text": torch.zeros(2, 8, 32)}, {"text": 1, "vision": 0}
    message = ("REP feature buffers need every stream's layer 0 before layer 1 of the vision stream, but the text "
               "stream is not there; the backbone must run its streams in step (ForwardContext.lockstep), or pass "
               "buffer_source='parameters'.")
    with pytest.raises(RuntimeError, match=re.escape(message) + "$"):
        layer._features(run, {"image": torch.zeros(2, 8, 32)})


def test_clip_text_features_add_the_mean_of_the_visible_text_outputs(shapes_missing, monkeypatch):
    """Z_text on CLIP's causal tower: the private slots' outputs of layer 0 plus the mean of the text tokens'
    outputs a query may see (padding excluded), then eq. 7. Guards: the mean subtracted (mutmut rep
    RepLayer._features_19)."""
    runs = _capture_runs(monkeypatch)
    model = make_model("clip", "rep", **TINY).eval()
    batch = make_batch(shapes_missing["train"], "clip", n=4)
    seen = []
    model.backbone.text_model.encoder.layers[0].base_layer.register_forward_hook(
        lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(**batch)
    buffers, states, (out0,) = _pooled(model), runs[0].states, seen
    weights = batch["attention_mask"][..., None].float()
    tokens = out0[:, 8:]  # [shared slots | private slots | text]
    z = out0[:, 4:8] + ((tokens * weights).sum(1) / weights.sum(1))[:, None]
    alpha = buffers.alpha("text")
    with torch.no_grad():
        expected = alpha * buffers.G["text"](buffers.norm["text"](z)) + (1 - alpha) * states.private["text"][0]
    torch.testing.assert_close(states.private["text"][1], expected)


def test_mean_of_visible_tokens_divides_by_their_count():
    """The sample's E_m (and CLIP's text mean) is the mean over the modality's visible tokens: one visible token is
    its own mean, none gives 0. Guards: the count's floor 1 -> 2 (mutmut rep RepLayer._mean_tokens_11), which
    halves a single visible token."""
    hidden = torch.arange(36.0).view(3, 4, 3)
    visible = torch.tensor([[True, True, False, False], [False, False, True, True], [True, False, False, False]])
    run = SimpleNamespace(ctx=SimpleNamespace(spans={"joint": {"text": slice(1, 4)}}), visible={"joint": visible})
    mean = RepLayer._mean_tokens(run, "joint", "text", hidden)
    torch.testing.assert_close(mean, torch.stack([hidden[0, 1], hidden[1, 2:].mean(0), torch.zeros(3)]))


def test_init_embeddings_errors_end_with_the_fix(monkeypatch):
    """Both errors of REP's dynamic initialisation end with the fix as written. Guards: the fix's text changed
    (mutmut rep init_embeddings_13 for a backbone without PretrainedTokens, init_embeddings_18 for one that has no
    embedding of a modality)."""
    toy = SimpleNamespace(model_type="toy", modalities=("text", "image"))
    fix = "does not offer; pass dynamic_init=False, or add the PretrainedTokens mixin to its backbone interface."
    with pytest.raises(ValueError, match=re.escape(fix) + "$"):
        init_embeddings(toy)

    def refuse(self, modality):
        raise ValueError(f"clip has no pretrained embedding for {modality!r}.")

    interface = make_model("clip", None).interface
    monkeypatch.setattr(ClipBackbone, "pretrained_token_embedding", refuse)
    fix = ("clip has no pretrained embedding for 'text'. REP's dynamic initialisation (eq. 10) starts from one per "
           "modality; pass dynamic_init=False or extend pretrained_token_embedding in its backbone interface.")
    with pytest.raises(ValueError, match="^" + re.escape(fix) + "$"):
        init_embeddings(interface)
