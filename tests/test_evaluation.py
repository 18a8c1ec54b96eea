"""The evaluation helper: per-pattern logits, test protocols read off them, curves and the train x test grid."""

import numpy as np
import pytest
import torch

from hf_missing import MissingModalityCollator, simulate_missing
from hf_missing.data.synthetic import tiny_processor
from hf_missing.evaluation import missing_grid, predict_patterns
from hf_missing.metrics import classification_metrics
from tests.conftest import make_model


@pytest.fixture(scope="module")
def predictions(shapes):
    torch.manual_seed(0)
    model = make_model("clip", "map", prompt_length=2)
    return model, predict_patterns(model, shapes["test"], MissingModalityCollator(tiny_processor("clip")),
                                   "single_label", batch_size=16, progress=False)


def test_each_pattern_matches_a_direct_forward(shapes, predictions):
    model, preds = predictions
    assert set(preds.logits) == {"complete", "missing_text", "missing_image"}
    assert preds.logits["complete"].shape == (48, 4) and preds.labels.shape == (48,)
    collator = MissingModalityCollator(tiny_processor("clip"))
    rows = [dict(shapes["test"][i]) | {"missing_type": 2} for i in range(5)]
    with torch.no_grad():
        direct = model.eval()(**collator(rows)).logits.numpy()
    assert np.allclose(preds.logits["missing_image"][:5], direct, atol=1e-5)
    assert not np.allclose(preds.logits["missing_image"], preds.logits["complete"])


def test_a_test_rate_uses_exactly_simulate_missings_table(shapes, predictions):
    _, preds = predictions
    codes = np.asarray(simulate_missing(shapes, rate=0.7, pattern="both", seed=3)["test"]["missing_type"])
    assert np.array_equal(preds.codes_at(0.7, "both", seed=3), codes)
    stacked = np.stack([preds.logits[n] for n in ("complete", "missing_text", "missing_image")])
    expected = classification_metrics("single_label", stacked[codes, np.arange(48)], preds.labels)
    assert preds.at(0.7, "both", seed=3) == expected


def test_curve_ends_are_the_single_pattern_results(predictions):
    _, preds = predictions
    curve = preds.curve([0.0, 0.5, 1.0], "image")
    assert [c["rate"] for c in curve] == [0.0, 0.5, 1.0]
    assert curve[0]["accuracy"] == preds.per_pattern()["complete"]["accuracy"]
    assert curve[-1]["accuracy"] == preds.per_pattern()["missing_image"]["accuracy"]


def test_grid_has_every_train_and_test_pattern(predictions):
    _, preds = predictions
    grid = missing_grid({"text": preds, "both": preds}, rate=0.7)
    assert set(grid) == {"text", "both"} and set(grid["both"]) == {"text", "image", "both"}
    assert grid["text"]["image"] == preds.at(0.7, "image")


def test_bad_protocol_and_rate_are_clear_errors(predictions):
    _, preds = predictions
    with pytest.raises(ValueError, match="Per-split protocols"):
        preds.codes_at(0.5, protocol="ragpt")
    with pytest.raises(ValueError, match=r"rate must lie in \[0, 1\]"):
        preds.at(1.5)


def test_three_modality_grids_cover_every_modality():
    """Catches grids and curves fixed to text and image: a text+image+audio model's grid has an 'audio' column and
    REP Table 2's one-modality-left columns (an 'only_image' draw leaves the image alone), and its 'both' test
    pattern draws the six incomplete patterns."""
    from hf_missing import ModalityPattern
    from hf_missing.evaluation import PatternPredictions, grid_patterns

    patterns = ModalityPattern(("text", "image", "audio"))
    rng = np.random.default_rng(0)
    logits = {name: rng.normal(size=(60, 3)) for name in patterns.names}
    preds = PatternPredictions(logits, rng.integers(0, 3, 60), "single_label", patterns)
    columns = ("text", "image", "audio", "only_text", "only_image", "only_audio", "both")
    assert grid_patterns(patterns.modalities) == columns
    grid = missing_grid({"both": preds}, rate=0.9)
    assert set(grid["both"]) == set(columns)
    assert set(preds.codes_at(0.9, "only_image").tolist()) == {0, patterns.code(("text", "audio"))}
    assert set(preds.codes_at(0.9, "both").tolist()) == set(range(7))
