"""Bad input that used to give silent wrong answers now raises, saying what is wrong and how to fix it
(issue 13, section 7); the input forms that are accepted on purpose are pinned here too."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from datasets import Dataset, IterableDatasetDict

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification, missing_settings, simulate_missing
from hf_missing.data.synthetic import tiny_backbone, tiny_processor
from hf_missing.methods.base import METHODS
from hf_missing.methods.options import annotations
from tests.conftest import make_batch, make_model

NAN, INF = float("nan"), float("inf")


def _ids(n: int) -> Dataset:
    return Dataset.from_dict({"x": list(range(n))})


# ---- simulate_missing: columns it writes --------------------------------------------------------
def test_simulate_refuses_sample_index_as_the_codes_column():
    with pytest.raises(ValueError, match=r"column='sample_index' is taken.*pass another name"):
        simulate_missing(_ids(4), rate=0.5, column="sample_index")


def test_simulate_refuses_to_replace_a_foreign_sample_index():
    data = _ids(4).add_column("sample_index", [7, 7, 7, 7])
    with pytest.raises(ValueError, match=r"already has a 'sample_index' column that is not the row index 0\.\.3.*"
                                         r"rename_column.*remove_columns.*overwrite=True"):
        simulate_missing(data, rate=0.5)


def test_simulate_overwrite_replaces_its_columns():
    data = _ids(4).add_column("sample_index", [7, 7, 7, 7])
    assert simulate_missing(data, rate=0.5, overwrite=True)["sample_index"] == [0, 1, 2, 3]


def test_simulate_keeps_a_sample_index_it_wrote_itself():
    once = simulate_missing(_ids(10), rate=0.5, seed=1)
    twice = simulate_missing(once, rate=1.0, seed=2, column="missing_type_full")
    assert twice["sample_index"] == list(range(10)) and twice["missing_type"] == once["missing_type"]
    assert 0 not in twice["missing_type_full"]


# ---- simulate_missing: argument types -----------------------------------------------------------
@pytest.mark.parametrize(("rate", "error", "message"), [
    (True, TypeError, r"rate must be a number, got True \(bool\)"),
    ("0.5", TypeError, r"rate must be a number, got '0\.5' \(str\)"),
    (None, TypeError, "rate must be a number, got None"),
    (NAN, ValueError, "rate must be a finite number in \\[0, 1\\], got nan"),
    (INF, ValueError, "rate must be a finite number in \\[0, 1\\], got inf"),
])
def test_simulate_rejects_rates_that_are_not_finite_numbers(rate, error, message):
    with pytest.raises(error, match=message):
        simulate_missing(_ids(4), rate=rate)


@pytest.mark.parametrize("rate", [np.float64(0.29), np.float32(0.29), np.float16(0.29)])
def test_simulate_reads_numpy_rates_as_the_decimal_they_print_as(rate):
    out, settings = simulate_missing(_ids(100), rate=rate, seed=4, return_settings=True)
    assert out["missing_type"] == simulate_missing(_ids(100), rate=0.29, seed=4)["missing_type"]
    assert settings["rate"] == 0.29 and type(settings["rate"]) is float
    assert np.count_nonzero(out["missing_type"]) == 29


def test_simulate_rejects_a_bool_both_ratio():
    with pytest.raises(TypeError, match="both_ratio must be a number, got True"):
        simulate_missing(_ids(4), rate=0.5, both_ratio=True)


@pytest.mark.parametrize("seed", [None, True, 0.5, -1, "0"])
def test_simulate_rejects_seeds_that_are_not_non_negative_ints(seed):
    with pytest.raises(TypeError, match=rf"seed must be a non-negative int, got {seed!r}.*seed=0"):
        simulate_missing(_ids(4), rate=0.5, seed=seed)


def test_simulate_accepts_a_numpy_int_seed():
    out = simulate_missing(_ids(20), rate=0.5, seed=np.int64(3))
    assert out["missing_type"] == simulate_missing(_ids(20), rate=0.5, seed=3)["missing_type"]
    assert missing_settings(out)["seed"] == 3


@pytest.mark.parametrize("streamed", [
    lambda: _ids(4).to_iterable_dataset(),
    lambda: IterableDatasetDict({"train": _ids(4).to_iterable_dataset()}),
], ids=["IterableDataset", "IterableDatasetDict"])
def test_simulate_needs_a_map_style_dataset(streamed):
    with pytest.raises(TypeError, match=r"needs a map-style Dataset or DatasetDict.*without streaming=True.*"
                                        r"Dataset\.from_generator"):
        simulate_missing(streamed(), rate=0.5)


def test_simulate_rejects_other_containers():
    with pytest.raises(TypeError, match=r"needs a datasets\.Dataset or DatasetDict, got list"):
        simulate_missing([{"x": 1}], rate=0.5)


# ---- collator: missing_type and labels -----------------------------------------------------------
@pytest.fixture(scope="module")
def samples(shapes_missing):
    return [dict(shapes_missing["test"][i]) for i in range(4)]


def _collate(samples, column, values):
    features = [{**s, column: v} for s, v in zip(samples, values, strict=True)] if values else samples
    return MissingModalityCollator(tiny_processor("clip"))(features)


@pytest.mark.parametrize(("value", "message"), [
    (1.9, r"missing_type of sample 1 is 1\.9; it must be an integer code or a pattern name"),
    (True, "missing_type of sample 1 is True"),
    ("missing_cat", r"missing_type of sample 1 is 'missing_cat', not a pattern name; use one of \['complete'"),
    (7, r"missing_type of samples \[1\] is \[7\], outside the codes 0\.\.2"),
    (-1, r"missing_type of samples \[1\] is \[-1\], outside the codes 0\.\.2"),
])
def test_collator_rejects_bad_missing_type(samples, value, message):
    with pytest.raises(ValueError, match=message):
        _collate(samples, "missing_type", [0, value, 0, 0])


def test_collator_takes_pattern_names_and_integral_codes(samples):
    codes = [s["missing_type"] for s in samples]
    names = [["complete", "missing_text", "missing_image"][c] for c in codes]
    expected = torch.tensor(codes)
    assert torch.equal(_collate(samples, "missing_type", names)["missing_type"], expected)
    assert torch.equal(_collate(samples, "missing_type", [float(c) for c in codes])["missing_type"], expected)
    assert torch.equal(_collate(samples, "missing_type", [np.int64(c) for c in codes])["missing_type"], expected)


@pytest.mark.parametrize(("value", "message"), [
    (1.7, r"label of sample 1 is 1\.7; single-label targets are class indices"),
    (NAN, r"label of sample 1 is nan"),
    ("cat", r"label of sample 1 is 'cat'; encode class names as indices with dataset\.class_encode_column"),
])
def test_collator_rejects_labels_that_are_not_class_indices(samples, value, message):
    with pytest.raises(ValueError, match=message):
        _collate(samples, "label", [0, value, 2, 3])


def test_collator_takes_integral_float_labels(samples):
    assert _collate(samples, "label", [0.0, 1.0, np.int64(2), 3])["labels"].tolist() == [0, 1, 2, 3]


def test_collator_rejects_ragged_multi_hot_labels(samples):
    with pytest.raises(ValueError, match=r"multi-hot rows of equal length.*\[2, 2, 3, 2\]"):
        _collate(samples, "label", [[0, 1], [1, 0], [1, 0, 1], [0, 0]])


@pytest.mark.parametrize("unlabelled", [[0], [2], [1, 3]])
def test_collator_rejects_a_partly_labelled_batch(samples, unlabelled):
    features = [dict(s) for s in samples]
    del features[unlabelled[0]]["label"]  # the first one lacks the column, the others hold None
    for i in unlabelled[1:]:
        features[i]["label"] = None
    message = rf"Samples {re.escape(str(unlabelled))} of this batch have no 'label' \(absent or None\)"
    with pytest.raises(ValueError, match=message + ".*labelled for every sample or for none"):
        MissingModalityCollator(tiny_processor("clip"))(features)


def test_collator_emits_no_labels_when_no_sample_has_one(samples):
    assert "labels" not in _collate(samples, "label", [None] * 4)
    assert "labels" not in MissingModalityCollator(tiny_processor("clip"))(
        [{k: v for k, v in s.items() if k != "label"} for s in samples])


# ---- method options -------------------------------------------------------------------------------
def _options(kind: type) -> list[tuple[str, str]]:
    return [(method, name) for method in hf_missing.list_methods()
            for name in METHODS[method].config_cls.options_help()
            if annotations(METHODS[method].config_cls)[name] is kind]


@pytest.mark.parametrize(("method", "option"), _options(float))
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_every_float_option_rejects_non_finite_values(method, option, value):
    with pytest.raises(ValueError, match=rf"{method} option {option} must be a finite number, got {value}; pass e.g. "
                                         "its default"):
        hf_missing.get_method_config(method, **{option: value})


@pytest.mark.parametrize(("method", "option"), _options(int))
@pytest.mark.parametrize("value", [2.5, True, "4"])
def test_every_int_option_rejects_other_types(method, option, value):
    with pytest.raises(TypeError, match=rf"{method} option {option} must be an int, got {value!r}"):
        hf_missing.get_method_config(method, **{option: value})


@pytest.mark.parametrize(("method", "options", "message"), [
    ("cmpt", {"align_weight": "0.2"}, r"cmpt option align_weight must be a finite number, got '0\.2'"),
    ("rep", {"dynamic_init": "yes"}, "rep option dynamic_init must be True or False, got 'yes'"),
    ("rep", {"noise_type": 3}, "rep option noise_type must be a string, got 3; pass e.g. its default 'gaussian'"),
    ("memprompt", {"prompt_layers": [0, 1.5]}, r"prompt_layers must be a list of ints, got \[0, 1\.5\]"),
    ("memprompt", {"shared_dim": 2.0}, r"shared_dim must be an int or None, got 2\.0; pass e.g. its default None"),
    ("cmpt", {"proxy_modalities": "text"}, "proxy_modalities must be a list of strings or None, got 'text'"),
    ("cmpt", {"lora_targets": [1]}, r"lora_targets must be a list of strings, got \[1\]"),
])
def test_options_of_the_wrong_type(method, options, message):
    with pytest.raises(TypeError, match=message):
        hf_missing.get_method_config(method, **options)


@pytest.mark.parametrize(("method", "options"), [
    ("rep", {"noise_scale": -0.1}), ("rep", {"ortho_weight": -1.0}), ("memprompt", {"ortho_weight": -1.0}),
    ("cmpt", {"align_weight": -0.2}), ("cmpt", {"lora_alpha": 0.0}), ("cmpt", {"lora_dropout": 1.0}),
    ("redeem", {"recon_weight": -1.0}), ("ragpt", {"prompt_layer": -1}), ("lora", {"alpha": 0.0}),
    ("lora", {"dropout": 1.0}),
])
def test_options_out_of_range(method, options):
    with pytest.raises(ValueError, match=r"must be (non-negative|positive)"):
        hf_missing.get_method_config(method, **options)


def test_options_are_converted_to_their_annotated_types():
    rep = hf_missing.get_method_config("rep", noise_scale=1, ortho_weight=np.float32(0.5), prompt_length=np.int64(4))
    assert (rep.noise_scale, rep.ortho_weight, rep.prompt_length) == (1.0, 0.5, 4)
    assert type(rep.noise_scale) is float and type(rep.prompt_length) is int
    memprompt = hf_missing.get_method_config("memprompt", prompt_layers=(1, 0), shared_dim=None)
    assert memprompt.prompt_layers == [0, 1] and memprompt.shared_dim is None
    assert hf_missing.get_method_config("cmpt", lora_targets="q").lora_targets == ["q"]


# ---- model ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_labels", [0, -1, 2.5, True])
def test_model_needs_a_positive_int_num_labels(num_labels):
    with pytest.raises(ValueError, match=rf"num_labels must be a positive int .*got {num_labels!r}.*num_classes"):
        MissingModalityForClassification.from_backbone(tiny_backbone("clip"), num_labels=num_labels)


def test_model_needs_a_non_empty_id2label():
    with pytest.raises(ValueError, match="id2label is empty, so the head would have no output"):
        MissingModalityForClassification.from_backbone(tiny_backbone("clip"), id2label={})


@pytest.fixture(scope="module")
def model():
    return make_model("clip", None).eval()


@pytest.fixture(scope="module")
def batch(shapes_missing):
    return make_batch(shapes_missing["test"], "clip", n=4)


def test_forward_rejects_an_empty_batch(model, batch):
    empty = {k: v[:0] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    with pytest.raises(ValueError, match=r"The batch is empty \(input_ids has 0 samples\).*skip empty batches"):
        model(**empty)


@pytest.mark.parametrize(("shift", "message"), [
    (0.9, r"missing_type of samples \[0, 1, 2, 3\] is not a whole number"),
    (NAN, r"missing_type of samples \[0, 1, 2, 3\] is not a whole number \(\[nan"),
    (3.0, r"missing_type of samples \[0, 1, 2, 3\] is \[3, .*outside the codes 0\.\.2"),
])
def test_forward_rejects_bad_missing_type(model, batch, shift, message):
    with pytest.raises(ValueError, match=message):
        model(**{**batch, "missing_type": torch.tensor([0.0, 1.0, 2.0, 3.0]) + shift})


def test_forward_rejects_a_bool_missing_type(model, batch):
    with pytest.raises(ValueError, match="missing_type is a bool tensor; pass integer pattern codes"):
        model(**{**batch, "missing_type": batch["missing_type"].bool()})


def test_forward_takes_pattern_names_and_integral_float_codes(model, batch):
    names = [model.patterns.names[c] for c in batch["missing_type"].tolist()]
    with torch.no_grad():
        reference = model(**batch).logits
        assert torch.equal(model(**{**batch, "missing_type": names}).logits, reference)
        assert torch.equal(model(**{**batch, "missing_type": batch["missing_type"].float()}).logits, reference)


@pytest.mark.parametrize(("labels", "message"), [
    ([0.0, 1.7, 2.0, 3.0], r"Labels of samples \[1\] are not whole numbers \(\[1\.70"),
    ([0.0, NAN, 2.0, 3.0], r"Labels of samples \[1\] are not whole numbers \(\[nan\]\)"),
])
def test_single_label_loss_rejects_fractional_labels(model, batch, labels, message):
    with pytest.raises(ValueError, match=message + r".*multi_label_classification"):
        model(**{**batch, "labels": torch.tensor(labels)})


def test_single_label_loss_takes_integral_float_labels(model, batch):
    with torch.no_grad():
        as_float = model(**{**batch, "labels": torch.tensor([0.0, 1.0, 2.0, 3.0])}).loss
        assert torch.equal(as_float, model(**{**batch, "labels": torch.tensor([0, 1, 2, 3])}).loss)


@pytest.fixture(scope="module")
def multi_label_model():
    return MissingModalityForClassification.from_backbone(
        tiny_backbone("clip"), num_labels=4, problem_type="multi_label_classification").eval()


@pytest.mark.parametrize(("value", "message"), [
    (5.0, r"samples \[2\] hold \[5\.0\]"),
    (-1.0, r"samples \[2\] hold \[-1\.0\]"),
    (NAN, r"samples \[2\] hold \[nan\]"),
])
def test_multi_label_loss_rejects_targets_outside_unit_interval(multi_label_model, batch, value, message):
    labels = torch.zeros(4, 4)
    labels[2, 1] = value
    with pytest.raises(ValueError, match=r"Multi-label targets must lie in \[0, 1\].*" + message):
        multi_label_model(**{**batch, "labels": labels})


def test_multi_label_loss_takes_soft_targets(multi_label_model, batch):
    with torch.no_grad():
        assert math.isfinite(multi_label_model(**{**batch, "labels": torch.full((4, 4), 0.3)}).loss.item())
