"""Natural missingness: values absent in the data (None image, empty / blank text, empty feature sequence) set the
pattern; simulate_missing only removes present modalities, counts both towards the rate and records them apart;
evaluation keeps it and reports it as its own row."""

import numpy as np
import pytest
import torch
from datasets import Dataset

from hf_missing import MissingModalityCollator, missing_settings, simulate_missing
from hf_missing.data.simulate import allot
from hf_missing.data.synthetic import shapes_dataset, tiny_processor
from hf_missing.evaluation import NATURAL_ROW, predict_patterns
from tests.conftest import make_model

NO_IMAGE = (1, 4, 7)  # rows whose image is None in the data
NO_TEXT = {2: "", 5: "   ", 8: None}  # rows whose text is empty, blank or None


def with_gaps(split: Dataset) -> Dataset:
    """``split`` with images and texts removed the way real data lacks them."""
    def blank(sample: dict, index: int) -> dict:
        image = None if index in NO_IMAGE else sample["image"]
        return {"image": image, "text": NO_TEXT.get(index, sample["text"])}
    return split.map(blank, with_indices=True)


@pytest.fixture(scope="module")
def gappy():
    return with_gaps(shapes_dataset(n_train=40, n_test=20, seed=0)["test"])


def test_absent_values_set_the_pattern_and_simulation_keeps_them(gappy):
    """Catches: a None image or an empty / whitespace text marked complete (the collator then fails), or a simulated
    draw that overwrites a natural pattern."""
    out = simulate_missing(gappy, rate=0.0, seed=0)
    codes = out["missing_type"]
    assert [codes[i] for i in NO_IMAGE] == [2, 2, 2] and [codes[i] for i in NO_TEXT] == [1, 1, 1]
    assert sum(c != 0 for c in codes) == 6
    drawn = simulate_missing(gappy, rate=0.7, pattern="both", seed=3)["missing_type"]
    assert all(drawn[i] == 2 for i in NO_IMAGE) and all(drawn[i] == 1 for i in NO_TEXT)


def test_a_rate_counts_natural_and_simulated_and_records_them_apart(gappy):
    """Catches: a rate applied on top of the natural gaps (more incomplete samples than asked), or settings that do
    not tell natural from simulated missingness."""
    out = simulate_missing(gappy, rate=0.7, pattern="both", seed=0, split="test")
    settings = missing_settings(out)
    assert np.bincount(out["missing_type"], minlength=3).tolist() == [6, 7, 7]  # 14 of 20 = 0.7, 35% each
    assert settings["natural_counts"] == {"test": [14, 3, 3]}
    assert settings["simulated_counts"] == {"test": [-8, 4, 4]}
    assert settings["counts"] == {"test": [6, 7, 7]}


def test_natural_missingness_above_the_rate_is_kept_not_undone(gappy):
    """Catches: complete samples made incomplete (or natural gaps filled) when the data already lacks more than the
    rate asks."""
    out = simulate_missing(gappy, rate=0.1, pattern="image", seed=0)
    assert np.bincount(out["missing_type"], minlength=3).tolist() == [14, 3, 3]


def test_allot_fills_the_shortfall_of_each_pattern_up_to_the_total():
    """Catches: an over-represented natural pattern pushing the total past the rate, or shortfalls misallocated."""
    assert allot({"missing_text": 35, "missing_image": 35}, {}) == {"missing_text": 35, "missing_image": 35}
    assert allot({"missing_text": 35, "missing_image": 35}, {"missing_text": 50}) == {"missing_text": 0,
                                                                                        "missing_image": 20}
    assert allot({"missing_text": 35, "missing_image": 35}, {"missing_text": 5, "missing_image": 5}) == {
        "missing_text": 30, "missing_image": 30}
    assert allot({"missing_text": 3}, {"missing_image": 9}) == {"missing_text": 0}


def test_allot_gives_the_leftover_sample_to_the_largest_remainder():
    """Shortfalls 10 and 5 scaled to the 8 still missing: exactly 5.33 and 2.67, floored to 5 and 2; the leftover one
    goes to the largest remainder (b), none to the pattern without a shortfall. Mutants killed (simulate.allot): the
    remainder order dropped, reversed or taken as ``exact + out``; ``out[name] += 1`` -> ``= 1``, ``-= 1``, ``+= 2``."""
    assert allot({"a": 10, "b": 5, "c": 10}, {"c": 17}) == {"a": 5, "b": 3, "c": 0}


def test_a_dataset_with_gaps_collates_without_a_manual_missing_type(gappy):
    """Catches: the issue's failure, 'Sample 1 has no image but its missing_type says the image is present'."""
    out = simulate_missing(gappy, rate=0.5, seed=0)
    batch = MissingModalityCollator(tiny_processor("clip"))([out[i] for i in range(10)])
    assert batch["missing_type"][list(NO_IMAGE)].tolist() == [2, 2, 2]
    assert make_model("clip", "map", prompt_length=2)(**batch).logits.shape == (10, 4)


def test_a_modality_absent_from_every_row_is_a_clear_error(gappy):
    """Catches: a wrong column mapping (every image None) silently trained as 100% image-missing."""
    no_images = gappy.map(lambda s: {"image": None})
    with pytest.raises(ValueError, match=r"every row's 'image' is None or empty.*columns="):
        simulate_missing(no_images, rate=0.5)


def test_a_row_without_any_modality_is_a_clear_error(gappy):
    """Catches: a row with nothing left reaching the model as two placeholders."""
    empty = gappy.map(lambda s, i: {"text": "" if i == 1 else s["text"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"rows \[1\].*have no \['text', 'image'\] at all"):
        simulate_missing(empty, rate=0.5)


def test_columns_map_modalities_and_a_half_mapped_dataset_raises(gappy):
    """Catches: natural gaps ignored in a dataset whose modality columns have other names, or a missing column
    silently treated as present."""
    renamed = gappy.rename_columns({"text": "caption", "image": "photo"})
    out = simulate_missing(renamed, rate=0.0, columns={"text": "caption", "image": "photo"})
    assert [out["missing_type"][i] for i in NO_IMAGE] == [2, 2, 2]
    with pytest.raises(ValueError, match=r"no column \['image'\].*columns="):
        simulate_missing(gappy.rename_column("image", "photo"), rate=0.0)


def test_empty_feature_sequences_are_naturally_missing():
    """Catches: an empty audio recording ([] frames) treated as present for a third modality."""
    data = Dataset.from_dict({"text": ["a b", "c", "d"], "image": ["x.png", "y.png", ""],
                              "audio": [[[0.1, 0.2]], [], [[0.3, 0.4]]]})
    out = simulate_missing(data, rate=0.0, modalities=("text", "image", "audio"))
    names = out.features["missing_type"].names
    assert [names[c] for c in out["missing_type"]] == ["complete", "missing_audio", "missing_image"]


def test_per_epoch_redraws_keep_natural_gaps(gappy):
    """Catches: MPLMM's per-epoch redraw giving a sample with no image in the data a 'complete' pattern."""
    out = simulate_missing(gappy, rate=0.0, protocol="per_epoch", seed=0)
    collator = MissingModalityCollator(tiny_processor("clip"), redraw_rate=1.0)
    codes = collator([out[i] for i in range(10)])["missing_type"].tolist()
    assert [codes[i] for i in NO_IMAGE] == [2, 2, 2] and [codes[i] for i in (2, 5, 8)] == [1, 1, 1]


def test_evaluation_keeps_natural_gaps_and_reports_them_as_a_row(gappy):
    """Catches: evaluation forcing a None image 'present' (crash), a 'complete' row that includes samples lacking
    a modality, no row for the data as it is, or test rates that disagree with simulate_missing's table."""
    torch.manual_seed(0)
    model = make_model("clip", "map", prompt_length=2).eval()
    collator = MissingModalityCollator(tiny_processor("clip"))
    preds = predict_patterns(model, gappy, collator, "single_label", batch_size=8, progress=False)
    assert set(preds.per_pattern()) == {"complete", "missing_text", "missing_image", NATURAL_ROW}
    natural = simulate_missing(gappy, rate=0.0)
    with torch.no_grad():
        direct = model(**collator([natural[i] for i in range(20)])).logits.numpy()
    assert np.allclose(preds.logits["complete"], direct, atol=1e-5)
    labels = np.asarray(gappy["label"])
    complete_rows = np.asarray(natural["missing_type"]) == 0
    expected = (preds.logits["complete"][complete_rows].argmax(-1) == labels[complete_rows]).mean()
    assert preds.per_pattern()["complete"]["accuracy"] == pytest.approx(expected)
    drawn = simulate_missing(gappy, rate=0.7, pattern="both", seed=3, split="test")
    assert np.array_equal(preds.codes_at(0.7, "both", seed=3), np.asarray(drawn["missing_type"]))


def test_natural_gaps_above_the_rate_are_reported_once_per_split(gappy, caplog):
    """6 of 20 samples lack a modality in the data: a rate of 0.1 logs how many and the split's real rate; a rate of
    0.3 (exactly the natural share) or the per-epoch protocol (which simulates nothing here) log nothing. Guards
    (simulate._warn_if_over): ``n`` None; the share ``(n - counts[0]) / n`` with ``*``, ``n + counts[0]`` or
    ``counts[1]`` (in the test or the message); ``>`` -> ``>=``; the per-epoch test inverted or its name
    XX-wrapped / upper-cased; the split name or rate logged as None; the literals XX-wrapped or re-cased."""
    with caplog.at_level("WARNING", logger="hf_missing.data.simulate"):
        simulate_missing(gappy, rate=0.1, seed=0, split="test")
    messages = [r.getMessage() for r in caplog.records if r.name == "hf_missing.data.simulate"]
    assert len(messages) == 1
    assert messages[0].startswith("Split 'test': 6 of 20 samples already miss a modality in the data, more than "
                                  "rate=0.1; none is simulated")
    assert messages[0].endswith("none is simulated and the split's missing rate is 0.300.")
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_missing.data.simulate"):
        simulate_missing(gappy, rate=0.3, seed=0, split="test")
        simulate_missing(gappy, rate=0.0, seed=0, protocol="per_epoch")
    assert not [r for r in caplog.records if r.name == "hf_missing.data.simulate"]


def test_natural_errors_name_the_split_and_the_fix(gappy):
    """Guards (simulate.simulate_missing, simulate.natural_table, simulate._check_natural): the split name not passed
    on (None, or the default "dataset"); the modalities without a column listed as those with one; the column hint
    XX-wrapped; a one-row split skipping the checks (``== 0`` -> ``== 1``); more than 10 empty rows listed; the
    "Drop them" hint XX-wrapped or upper-cased."""
    from datasets import DatasetDict

    no_images = gappy.map(lambda s: {"image": None})
    with pytest.raises(ValueError, match=r"^Split 'validation': every row's 'image' is None or empty"):
        simulate_missing(DatasetDict({"validation": no_images}), rate=0.5)
    with pytest.raises(ValueError, match=r"^Split 'dataset': every row's 'image' is None or empty"):
        simulate_missing(Dataset.from_dict({"text": ["a"], "image": [None]}), rate=0.5)
    with pytest.raises(ValueError, match=r"no column \['image'\] for modalities \['image'\], but has columns for "
                                         r"\['text'\]; its columns are .* Map each modality to its column with "
                                         r"columns=\{modality: column\}\.$"):
        simulate_missing(gappy.rename_column("image", "photo"), rate=0.0)
    blank = Dataset.from_dict({"text": [""] * 12 + ["a", ""], "image": [""] * 12 + ["", "x.png"]})
    with pytest.raises(ValueError) as err:
        simulate_missing(blank, rate=0.0, split="train")
    message = str(err.value)
    assert message.startswith("Split 'train': rows [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] (12 in all) have no")
    assert message.endswith("Drop them, e.g. dataset.filter(lambda s: s['text'] or s['image']), or supply a modality.")


def test_natural_gaps_beyond_the_first_scan_batch_are_found():
    """Values are read 1000 rows at a time; gaps in later batches land on their own rows. Guards
    (simulate.natural_table): the batch offsets stepping by 1 (``range(0, SCAN_BATCH)`` or the step dropped)."""
    n = 2500
    text = ["t"] * n
    image = ["x.png"] * n
    for i in (5, 1500, 2400):
        image[i] = ""
    for i in (1001, 2499):
        text[i] = ""
    out = simulate_missing(Dataset.from_dict({"text": text, "image": image}), rate=0.0)
    codes = np.asarray(out["missing_type"])
    assert np.flatnonzero(codes == 2).tolist() == [5, 1500, 2400]
    assert np.flatnonzero(codes == 1).tolist() == [1001, 2499]
