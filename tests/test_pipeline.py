"""The "missing-modality-classification" transformers pipeline: dict inputs with absent modalities, lists,
batching, labels with scores, loading from a local adapter folder; its predictions equal the model's forward."""

import io

import numpy as np
import pytest
import torch
from transformers import pipeline

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification
from hf_missing.backbones.fused import FusedProcessor
from hf_missing.backbones.tiny import tiny_backbone, tiny_processor
from hf_missing.data.synthetic import CLASSES, shapes_dataset
from hf_missing.pipeline import TASK
from tests.conftest import perturbed

LABELS = {i: name for i, name in enumerate(CLASSES)}


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    """A MAP adapter on the tiny fused backbone, saved as a user would; the backbone folder holds its processor."""
    root = tmp_path_factory.mktemp("pipe")
    tiny_backbone("fused").save_pretrained(root / "backbone")
    processor = tiny_processor("fused")
    FusedProcessor(processor.tokenizer, processor.image_processor).save_pretrained(root / "backbone")
    model = MissingModalityForClassification.from_pretrained(
        str(root / "backbone"), adapter="map", adapter_options={"prompt_length": 2, "prompt_depth": 2},
        num_labels=4, id2label=LABELS, label2id={v: k for k, v in LABELS.items()})
    perturbed(model).save_pretrained(root / "adapter")
    return root / "adapter"


@pytest.fixture(scope="module")
def samples():
    test = shapes_dataset(n_train=4, n_test=6, seed=1)["test"]
    return [{"text": test[i]["text"], "image": test[i]["image"]} for i in range(6)]


def _inputs(samples):
    """Complete, no image, blank text, no text key, image as PNG bytes, text only with image None."""
    png = io.BytesIO()
    samples[4]["image"].save(png, format="PNG")
    return [samples[0], {"text": samples[1]["text"], "image": None}, {"text": "   ", "image": samples[2]["image"]},
            {"image": samples[3]["image"]}, {"text": samples[4]["text"], "image": png.getvalue()},
            {"text": samples[5]["text"]}]


def test_predictions_equal_the_models_forward_on_the_same_inputs(adapter_dir, samples):
    """Catches: a pipeline that fills placeholders or missing_type differently from the collator, mislabels the
    scores, or loses a sample's pattern when batching (the issue's 'done when' test)."""
    pipe = pipeline(TASK, model=str(adapter_dir))
    inputs = _inputs(samples)
    outputs = pipe(inputs, batch_size=4, top_k=4)
    model = MissingModalityForClassification.from_pretrained(str(adapter_dir)).eval()
    collator = MissingModalityCollator(FusedProcessor.from_pretrained(model.config.backbone_name_or_path),
                                       modalities=model.interface.inputs)
    rows = [dict(samples[0], missing_type=0), dict(samples[1], image=None, missing_type=2),
            dict(samples[2], text=None, missing_type=1), dict(samples[3], text=None, missing_type=1),
            dict(samples[4], missing_type=0), dict(samples[5], image=None, missing_type=2)]
    with torch.no_grad():
        expected = torch.softmax(model(**collator(rows)).logits, dim=-1).numpy()
    assert len(outputs) == 6
    for out, probs in zip(outputs, expected, strict=True):
        assert [o["label"] for o in out] == [LABELS[i] for i in np.argsort(-probs)]
        assert np.allclose([o["score"] for o in out], np.sort(probs)[::-1], atol=1e-5)


def test_one_dict_gives_one_list_of_top_k_labels(adapter_dir, samples):
    """Catches: a single input answered as a list of lists, or top_k ignored."""
    pipe = pipeline(TASK, model=str(adapter_dir))
    out = pipe({"text": samples[0]["text"], "image": None}, top_k=2)
    assert len(out) == 2 and set(out[0]) == {"label", "score"} and out[0]["score"] >= out[1]["score"]
    assert len(pipe({"text": samples[0]["text"], "image": None})) == 4  # default top_k 5, capped at 4 labels


def test_an_in_memory_model_with_an_explicit_processor_works_on_a_torch_device(samples):
    """Catches: a pipeline that only works from a folder, or that does not move inputs to the model's device."""
    torch.manual_seed(0)
    model = MissingModalityForClassification.from_backbone(tiny_backbone("clip"), num_labels=4, id2label=LABELS,
                                                           label2id={v: k for k, v in LABELS.items()})
    pipe = pipeline(TASK, model=model.eval(), processor=tiny_processor("clip"), device="cpu")
    assert pipe([{"text": None, "image": samples[0]["image"]}])[0][0]["label"] in CLASSES


@pytest.mark.parametrize(("sample", "error", "message"), [
    ({"text": None, "image": None}, ValueError, "every modality missing"),
    ({"text": "a", "audio": [[0.0]]}, ValueError, r"Input keys \['audio'\] are not modalities"),
    ({"text": "a", "image": "https://example.com/x.png"}, ValueError, "is a URL"),
    ({"text": "a", "image": "/no/such/file.png"}, FileNotFoundError, "does not exist"),
    ({"text": "a", "image": np.zeros((4, 4, 3))}, TypeError, "not arrays"),
    ("a caption", TypeError, "takes a dict"),
])
def test_bad_inputs_fail_with_what_to_do(adapter_dir, sample, error, message):
    """Catches: an all-missing sample run on two placeholders, an unknown key dropped silently, a URL fetched, an
    array image read with a guessed channel order, or a bare string guessed to be text."""
    pipe = pipeline(TASK, model=str(adapter_dir))
    with pytest.raises(error, match=message):
        pipe(sample)


def test_an_oversized_image_is_refused_before_its_pixels_are_decoded(adapter_dir, monkeypatch, tmp_path):
    """Catches: a decompression bomb decoded before its size is checked."""
    path = tmp_path / "big.png"
    from PIL import Image
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(hf_missing.pipeline, "MAX_IMAGE_PIXELS", 100)
    loaded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loaded.append(1))
    with pytest.raises(ValueError, match="exceeds MAX_IMAGE_PIXELS"):
        pipeline(TASK, model=str(adapter_dir))({"text": "a", "image": str(path)})
    assert not loaded


def test_the_task_refuses_a_model_that_is_not_an_hf_missing_model():
    """Catches: a stock classifier accepted and then failing deep inside on missing_type."""
    with pytest.raises(TypeError, match="needs an hf_missing model"):
        hf_missing.pipeline.MissingModalityClassificationPipeline(model=torch.nn.Linear(2, 2))
