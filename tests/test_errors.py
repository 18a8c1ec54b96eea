"""Bad input gets a clear error that says what is wrong and how to fix it."""

import json

import pytest
import torch
from datasets import Dataset

import hf_missing
from hf_missing import MissingModalityCollator, ModalityPattern, simulate_missing
from hf_missing.data.synthetic import tiny_processor
from tests.conftest import make_batch, make_model


def test_unknown_method_lists_known_ones():
    with pytest.raises(ValueError, match=r"Unknown method 'ia3'; known methods: \[.*'baseline'.*'map'.*\]"):
        hf_missing.get_method_config("ia3")


def test_unknown_method_option_lists_options():
    with pytest.raises(ValueError, match=r"has no option.*prompt_length"):
        hf_missing.get_method_config("map", prompt_len=3)


def test_missing_type_contradicting_the_inputs(shapes_missing):
    model = make_model("clip", None)
    batch = make_batch(shapes_missing["train"], "clip", n=12)
    batch["missing_type"] = torch.zeros_like(batch["missing_type"])
    with pytest.raises(ValueError, match=r"says .* is present .* placeholder"):
        model(**batch)


def test_real_input_marked_missing(shapes_missing):
    model = make_model("vilt", None)
    batch = make_batch(shapes_missing["train"], "vilt", n=12)
    complete = batch["missing_type"] == 0
    batch["missing_type"][complete] = 1
    with pytest.raises(ValueError, match=r"says text is missing .* real"):
        model(**batch)


def test_dummies_without_missing_type(shapes_missing):
    batch = make_batch(shapes_missing["train"], "clip", n=12)
    batch.pop("missing_type")
    with pytest.raises(ValueError, match="no missing_type was given"):
        make_model("clip", None)(**batch)


def test_every_modality_missing():
    with pytest.raises(ValueError, match="every modality missing"):
        ModalityPattern(("text", "image")).code(("text", "image"))


def test_labels_out_of_range(shapes_missing):
    batch = make_batch(shapes_missing["train"], "clip", n=4)
    batch["labels"] = torch.tensor([0, 1, 2, 7])
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 3\]"):
        make_model("clip", None)(**batch)


def test_wrong_image_mode(shapes_missing):
    sample = dict(shapes_missing["train"][0], missing_type=0)
    sample["image"] = sample["image"].convert("L")
    with pytest.raises(ValueError, match="image mode 'L', expected 'RGB'"):
        MissingModalityCollator(tiny_processor("clip"))([sample])


def test_wrong_image_size(shapes_missing):
    batch = make_batch(shapes_missing["train"], "clip", n=4)
    batch["pixel_values"] = torch.randn(4, 3, 24, 24)
    with pytest.raises(ValueError, match=r"CLIP expects pixel_values of shape \[B, 3, 30, 30\]"):
        make_model("clip", None)(**batch)


def test_missing_text_value_marked_present(shapes_missing):
    sample = dict(shapes_missing["train"][0], missing_type=0, text=None)
    with pytest.raises(ValueError, match=r"has no 'text' \(absent, None or empty\) but its missing_type says the text"):
        MissingModalityCollator(tiny_processor("vilt"))([sample])


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_rate_outside_unit_interval(rate):
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        simulate_missing(Dataset.from_dict({"x": [1, 2]}), rate=rate)


def test_unknown_protocol_and_pattern():
    ds = Dataset.from_dict({"x": [1, 2]})
    with pytest.raises(ValueError, match="Unknown protocol 'mmp'"):
        simulate_missing(ds, rate=0.5, protocol="mmp")
    with pytest.raises(ValueError, match="Unknown pattern 'audio'"):
        simulate_missing(ds, rate=0.5, pattern="audio")


def test_existing_missing_type_column_is_not_silently_replaced():
    ds = simulate_missing(Dataset.from_dict({"x": [1, 2]}), rate=0.5)
    with pytest.raises(ValueError, match="overwrite=True"):
        simulate_missing(ds, rate=0.5)


def test_adapter_saved_for_another_backbone(tmp_path):
    model = make_model("clip", "map")
    model.save_pretrained(tmp_path / "clip_map")
    vilt = make_model("vilt", None)
    with pytest.raises(ValueError, match=r"trained on a clip backbone.*but this model.s backbone is a vilt"):
        vilt.load_adapter(str(tmp_path / "clip_map"))


def test_adapter_without_model_settings(tmp_path):
    folder = tmp_path / "foreign"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"}))
    with pytest.raises(ValueError, match="not an hf_missing adapter"):
        hf_missing.MissingModalityForClassification.from_pretrained(folder)


def test_non_pil_image(shapes_missing):
    sample = dict(shapes_missing["train"][0], missing_type=0, image=[[0, 1]])
    with pytest.raises(ValueError, match="must be a PIL image"):
        MissingModalityCollator(tiny_processor("clip"))([sample])


def test_methods_need_the_wrapper():
    from peft import get_peft_model

    from hf_missing.data.synthetic import tiny_backbone

    with pytest.raises(TypeError, match="adapt a MissingModalityForClassification"):
        get_peft_model(tiny_backbone("clip"), hf_missing.get_method_config("map"))


