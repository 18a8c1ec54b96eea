"""The sequence backbone (K precomputed feature sequences in one joint stream) and its stage-1 pretraining.

The method contract on it (every method: save / load, disable, Trainer, per-sample independence) is the common
suite's ``*-sequence`` cases (tests/test_common.py); here: what the backbone itself must get right.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_missing import MissingModalityCollator, MissingModalityForClassification, cli
from hf_missing.backbones.sequence import (
    SequenceConfig,
    SequenceModel,
    SequencePretrainSettings,
    pretrain_sequence_backbone,
)
from hf_missing.backbones.sequence.pretraining import STAGE1_FILE, _dropped_codes
from hf_missing.backbones.tiny import tiny_backbone, tiny_sequence_config
from hf_missing.data.synthetic import SEQUENCE_WIDTHS, sequence_dataset
from hf_missing.missingness import ModalityPattern

MODALITIES = tuple(SEQUENCE_WIDTHS)


pytestmark = pytest.mark.usefixtures("one_thread")


def _frames(batch: int, lengths: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {f"{m}_features": torch.randn(batch, lengths[m], SEQUENCE_WIDTHS[m], generator=generator)
            for m in MODALITIES}


def _model() -> SequenceModel:
    return tiny_backbone("sequence").eval()


# ---- configuration ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    ({"feature_modalities": {"text": 12}}, "at least two"),
    ({"feature_modalities": {"text": 12, "audio": 0}}, "frame widths"),
    ({"feature_modalities": {"text": 12, "audio": True}}, "frame widths"),
    ({"feature_modalities": {"text": 12, "audio": 10**9}}, "frame widths"),
    ({"feature_modalities": {"text": 12, "not a name": 8}}, "identifiers"),
    ({"feature_modalities": [("text", 12), ("audio", 8)]}, "maps modality names"),
    ({"max_feature_frames": {"text": 16}}, "one per modality"),
    ({"max_feature_frames": 0}, "max_feature_frames"),
    ({"modality_order": ["audio", "video", "text"]}, "modality_order"),
    ({"hidden_size": 30}, "multiple of num_attention_heads"),
    ({"num_hidden_layers": 10**6}, "num_hidden_layers"),
    ({"conv_kernel_size": 2}, "odd"),
    ({"hidden_act": "os.system"}, "hidden_act"),
    ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
])
def test_config_refuses_what_it_cannot_build(change, message):
    """Catches a config (from code or an untrusted config.json) that builds a wrong or huge model instead of
    failing with a clear message: a single modality (nothing can go missing), a width or layer count that is not a
    bounded int (``True`` passing as 1, a billion-wide projection), frame limits for other modalities, a head count
    that does not divide the width, an even (off-centre) convolution kernel."""
    settings = {**tiny_sequence_config().to_dict(), **change}
    settings.pop("model_type", None)
    with pytest.raises(ValueError, match=message):
        SequenceConfig(**settings)


def test_a_hostile_config_file_is_refused_before_anything_is_built(tmp_path):
    """Catches sizes from an untrusted config.json that reach module construction unchecked (a 10^7-wide layer would
    allocate terabytes before any weight is read)."""
    settings = {**tiny_sequence_config().to_dict(), "hidden_size": 10**7}
    (tmp_path / "config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"hidden_size must be an int in \[1, 8192\]"):
        AutoConfig.from_pretrained(tmp_path)


def test_saved_config_keeps_the_modality_order(tmp_path):
    """Catches a modality order taken from ``config.json``'s dict, which transformers writes with sorted keys: a
    reloaded backbone would read (text, audio, vision) as (audio, text, vision), so spans, missing_type codes and
    an adapter's per-modality tensors would silently swap."""
    config = tiny_sequence_config()
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["modality_order"] == list(MODALITIES)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SequenceConfig)
    assert list(loaded.feature_modalities) == list(MODALITIES) == list(loaded.max_feature_frames)


# ---- embeddings ---------------------------------------------------------------------------------------------
def test_each_modalitys_tokens_carry_its_own_type_embedding():
    """Catches modality-type embeddings swapped or shared between modalities (the stream could not tell which
    modality a token is), and tokens laid out in another order than the config's: with projections and positions
    zeroed, every token of modality m is exactly LayerNorm(type_m)."""
    model = _model()
    embeddings = model.embeddings
    with torch.no_grad():
        for k, frames in enumerate(embeddings.frames.values()):
            frames.projection.weight.zero_()
            frames.projection.bias.zero_()
            frames.position_embeddings.weight.zero_()
            frames.type_embedding.copy_(torch.linspace(-1.0, 1.0, model.config.hidden_size) * (k + 1) + k)
    lengths = {"text": 2, "audio": 3, "vision": 4}
    inputs = _frames(1, lengths)
    frames = {m: (inputs[f"{m}_features"], torch.ones(1, lengths[m], dtype=torch.long)) for m in MODALITIES}
    with torch.no_grad():
        tokens, mask = embeddings(frames)
        start = 0
        for m in MODALITIES:
            expected = embeddings.LayerNorm(embeddings.frames[m].type_embedding).expand(lengths[m], -1)
            torch.testing.assert_close(tokens[0, start:start + lengths[m]], expected, msg=m)
            start += lengths[m]
    assert mask.tolist() == [[1] * sum(lengths.values())]


def test_the_projection_is_a_centred_temporal_convolution():
    """Catches a per-frame linear map where MulT's temporal convolution is meant (frame t must see t-1 and t+1 with
    kernel 3), and an off-centre or unpadded convolution (a shifted or shorter token sequence)."""
    model = _model()
    inputs = _frames(1, {"text": 6, "audio": 3, "vision": 3})
    changed = inputs["text_features"].clone()
    changed[0, 3] += 1.0
    with torch.no_grad():
        before = model.embeddings.frames["text"](inputs["text_features"])
        after = model.embeddings.frames["text"](changed)
    moved = (after - before).abs().amax(-1)[0] > 0
    assert before.shape == (1, 6, model.config.hidden_size)
    assert moved.tolist() == [False, False, True, True, True, False]


def test_padding_frames_change_nothing():
    """Catches padding frames that are attended, pooled, or leak into their real neighbours through the temporal
    convolution (their values are garbage, not zeros): a sample padded with masked frames of large random values
    gives its unpadded result."""
    model = _model()
    lengths = {"text": 3, "audio": 4, "vision": 2}
    alone = _frames(1, lengths)
    padded, masks = {}, {}
    for m in MODALITIES:
        real = alone[f"{m}_features"]
        garbage = 100 * torch.randn(1, 3, real.shape[-1])
        padded[f"{m}_features"] = torch.cat([real, garbage], dim=1)
        masks[f"{m}_mask"] = torch.cat([torch.ones(1, real.shape[1]), torch.zeros(1, 3)], dim=1).long()
    with torch.no_grad():
        reference = model(**alone).pooler_output
        result = model(**padded, **masks).pooler_output
    torch.testing.assert_close(result, reference, atol=1e-5, rtol=1e-5)


# ---- interface ---------------------------------------------------------------------------------------------
def test_a_missing_modality_is_one_all_zero_frame_whatever_its_batch():
    """Catches a missing modality's placeholder that is not zero, or whose length depends on the batch (padded to
    the longest real sequence): the REP paper's fixed-length all-zero input, which FeatureInputs defines as one
    zero frame for every feature modality; and a placeholder the model would not recognise as one."""
    model = MissingModalityForClassification.from_backbone(_model(), num_labels=4)
    collator = MissingModalityCollator(None, modalities=model.interface.inputs)
    rows = sequence_dataset(n_train=2, n_test=1, seed=0)["train"]
    present = {**rows[0], "missing_type": "complete"}
    missing = {**rows[1], "missing_type": "missing_audio"}
    alone = collator([missing])
    together = collator([present, missing])
    assert alone["audio_features"].shape == (1, 1, SEQUENCE_WIDTHS["audio"]) and alone["audio_mask"].tolist() == [[1]]
    assert not together["audio_features"][1].any() and together["audio_mask"][1].tolist()[0] == 1
    assert not together["audio_mask"][1, 1:].any()
    spec = model.interface.modality("audio")
    assert spec.is_placeholder(together).tolist() == [False, True]
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**together).logits[1], model(**alone).logits[0], atol=1e-5, rtol=1e-5)


def test_mask_policy_removes_exactly_the_missing_modalitys_tokens():
    """Catches spans that do not match the joint stream's layout (another order than the config's, lengths of the
    wrong modality): under the "mask" policy a missing audio's tokens must leave attention exactly as if its mask
    were zero, and the text and vision tokens must stay."""
    model = MissingModalityForClassification.from_backbone(_model(), num_labels=4).eval()
    inputs = _frames(2, {"text": 3, "audio": 1, "vision": 5})
    inputs["audio_features"] = torch.zeros(2, 1, SEQUENCE_WIDTHS["audio"])
    with torch.no_grad():
        masked = model(**inputs, missing_type=["missing_audio"] * 2, missing_policy="mask").logits
        expected = model.head(model.backbone(**inputs, audio_mask=torch.zeros(2, 1, dtype=torch.long)).pooler_output)
    torch.testing.assert_close(masked, expected, atol=1e-6, rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    """Catches inputs the backbone would silently mis-read: more frames than its position embeddings (an index
    error deep inside, or positions of another frame), a frame width of another modality, a mask of another length,
    and a misspelt input name that would be ignored (the modality then taken as absent)."""
    model = MissingModalityForClassification.from_backbone(_model(), num_labels=4)
    too_long = _frames(1, {"text": 17, "audio": 2, "vision": 2})
    with pytest.raises(ValueError, match=r"text_features must have shape \[B, T, 12\] with 1 <= T <= 16"):
        model(**too_long)
    wrong_width = {**_frames(1, {"text": 2, "audio": 2, "vision": 2}), "vision_features": torch.randn(1, 2, 7)}
    with pytest.raises(ValueError, match="vision_features must have shape"):
        model(**wrong_width)
    with pytest.raises(ValueError, match="audio_mask must have shape"):
        model(**_frames(1, {"text": 2, "audio": 2, "vision": 2}), audio_mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="not \\['audio_feature'\\]"):
        model.backbone(**_frames(1, {"text": 2, "audio": 2, "vision": 2}), audio_feature=torch.ones(1, 2, 8))


# ---- stage 1 -----------------------------------------------------------------------------------------------
STAGE1 = SequencePretrainSettings(epochs=4, batch_size=16, lr=3e-3, weight_decay=0.0, drop_rate=0.3, seed=0)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """Stage 1 on 64 synthetic samples, in place on a seeded tiny model (its initial weights kept)."""
    data = sequence_dataset(n_train=64, n_test=32, seed=0)
    model = tiny_backbone("sequence", seed=3)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("stage1") / "sequence-stage1"
    pretrain_sequence_backbone({"train": data["train"], "validation": data["test"]}, model, folder, STAGE1)
    return folder, model, initial


def test_stage1_trains_and_reports(stage1):
    """Catches a stage 1 that does not learn (a head detached from the backbone, dropped modalities that never
    reach the model, no optimiser step) and a report that does not say what ran."""
    folder, _, _ = stage1
    report = json.loads((folder / STAGE1_FILE).read_text())
    losses = report["train_loss_per_epoch"]
    assert len(losses) == STAGE1.epochs and losses[-1] < 0.5 * losses[0]
    assert report["settings"]["drop_rate"] == STAGE1.drop_rate and report["modalities"] == list(MODALITIES)
    assert report["train_size"] == 64 and 0.0 <= report["validation_accuracy"] <= 1.0


def test_stage1_changes_the_backbone_and_nothing_else(stage1):
    """Catches parameters stage 1 leaves frozen (a modality's projection or the encoder never trained), the
    temporary head saved into the checkpoint, and updates without a gradient: with no weight decay, the position
    embeddings of frames no sample has (beyond 8) must keep their initial values."""
    _, model, initial = stage1
    state = model.state_dict()
    assert set(state) == set(initial) == set(SequenceModel(tiny_sequence_config()).state_dict())
    unchanged = [k for k, v in state.items() if torch.equal(v, initial[k])]
    assert not unchanged, unchanged
    for m in MODALITIES:
        key = f"embeddings.frames.{m}.position_embeddings.weight"
        assert torch.equal(state[key][8:], initial[key][8:]), key
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_stage1_checkpoint_loads_bit_identically(stage1, tmp_path):
    """Catches a checkpoint that does not round-trip (a tensor missing from model.safetensors and re-initialised, a
    config field lost, the modality order changed) and one that cannot take a method: AutoModel loads it as the
    backbone, and with ``adapter="rep"`` as the wrapper around the very same weights."""
    folder, model, _ = stage1
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", STAGE1_FILE]
    assert not [p for p in folder.parent.iterdir() if p != folder]  # no staging folder left behind
    loaded = AutoModel.from_pretrained(folder).eval()
    assert isinstance(loaded, SequenceModel)
    inputs = _frames(3, {"text": 4, "audio": 6, "vision": 2}, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).pooler_output, model(**inputs).pooler_output)
    wrapped = AutoModel.from_pretrained(folder, adapter="rep", num_labels=4,
                                        adapter_options={"prompt_length": 2, "prompt_depth": 2})
    assert isinstance(wrapped, MissingModalityForClassification) and wrapped.interface.modalities == MODALITIES
    wrapped.eval().disable_adapters()
    with torch.no_grad():
        assert torch.equal(wrapped.backbone(**inputs).pooler_output, model(**inputs).pooler_output)


def test_stage1_refuses_incomplete_rows_and_writes_nothing(tmp_path):
    """Catches a stage 1 that trains on rows with an absent modality as if they were complete (collating an empty
    sequence), one that takes a bare split for a dict of splits, and a failed run that leaves a partial folder
    behind."""
    data = sequence_dataset(n_train=8, n_test=2, seed=0)["train"]
    with pytest.raises(ValueError, match="splits by name"):
        pretrain_sequence_backbone(data, tiny_sequence_config(), tmp_path / "out", STAGE1)
    data = data.map(lambda s, i: {"audio": [] if i == 3 else s["audio"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"rows \[3\] have no audio"):
        pretrain_sequence_backbone({"train": data}, tiny_sequence_config(), tmp_path / "out", STAGE1)
    assert not list(tmp_path.iterdir())


def test_modality_dropping_never_drops_every_modality():
    """Catches a drop that can remove all of a sample's modalities (nothing left to classify), a rate that is not
    applied per modality, and draws that depend on the batch rather than on (seed, epoch, sample)."""
    patterns = ModalityPattern(MODALITIES)
    codes = _dropped_codes(list(range(3000)), patterns, 0.5, seed=0, epoch=0)
    present = patterns.present(torch.tensor(codes))
    assert present.any(dim=1).all()
    dropped = 1 - present.float().mean(dim=0)
    assert torch.all((dropped > 0.35) & (dropped < 0.5)), dropped  # 0.5, less the redrawn all-dropped draws
    assert _dropped_codes([7, 11], patterns, 0.5, 0, 0) == [codes[7], codes[11]]
    assert _dropped_codes(list(range(50)), patterns, 0.5, 0, 1) != codes[:50]


def test_quickstart_trains_on_the_sequence_backbone(tmp_path):
    """Catches a quickstart that feeds the sequence backbone text and images (columns it has no modality for) instead
    of frame sequences, or that asks it for a tokenizer: ``hf-missing train --backbone sequence`` trains, simulates
    the six incomplete patterns of text / audio / vision and reports them by name."""
    out = tmp_path / "run"
    assert cli.main(["train", "--backbone", "sequence", "--method", "map", "--epochs", "1", "--n-train", "32",
                     "--n-test", "16", "--output-dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["missing"]["modalities"] == list(MODALITIES) and len(report["missing"]["shares"]) == 6
    assert {"eval_missing_audio/accuracy", "eval_missing_text_vision/accuracy"} <= set(report["eval"])
