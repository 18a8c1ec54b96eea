import re
from fractions import Fraction

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict

from hf_missing import (
    MissingModalityCollator,
    MissingModalityForClassification,
    ModalityPattern,
    missing_settings,
    simulate_missing,
)
from hf_missing.data.simulate import _round_counts, missing_table, pattern_counts, pattern_shares, split_key
from hf_missing.data.synthetic import tiny_processor


def test_two_modality_codes_match_the_papers():
    patterns = ModalityPattern(("text", "image"))
    assert patterns.names == ["complete", "missing_text", "missing_image"]
    assert patterns.present(torch.tensor([0, 1, 2])).tolist() == [[True, True], [False, True], [True, False]]


def test_k_modalities_list_every_nonempty_present_subset():
    patterns = ModalityPattern(("text", "image", "audio"))
    assert patterns.num_patterns == 7
    present = patterns.present_matrix()
    assert present.any(dim=1).all() and len({tuple(r.tolist()) for r in present}) == 7
    assert patterns.code(("image", "audio")) == patterns.names.index("missing_image_audio")


def _ids(n):
    return Dataset.from_dict({"x": list(range(n))})


def test_map_protocol_counts_and_both_split():
    ds = simulate_missing(_ids(100), rate=0.7, pattern="both", protocol="map", seed=3)
    counts = np.bincount(ds["missing_type"], minlength=3).tolist()
    assert counts == [30, 35, 35]
    assert ds.features["missing_type"].names == ["complete", "missing_text", "missing_image"]


def test_map_both_gives_the_odd_incomplete_sample_to_missing_text():
    """MAP's generator marks every chosen sample missing-text, then ``int(n * 0.5)`` of them missing-image: an odd
    n leaves the extra sample without text (100 at 0.71: 36 no text, 35 no image). Mutation killed: the odd sample
    moved to missing-image."""
    ds = simulate_missing(_ids(100), rate=0.71, pattern="both", protocol="map", seed=0)
    assert np.bincount(ds["missing_type"], minlength=3).tolist() == [29, 36, 35]


def test_single_pattern_and_redeem_rounding():
    ds = simulate_missing(_ids(101), rate=0.7, pattern="image", protocol="redeem", seed=0)
    assert np.bincount(ds["missing_type"], minlength=3).tolist() == [30, 0, 71]
    both = simulate_missing(_ids(101), rate=0.7, pattern="both", protocol="redeem", seed=0)
    assert np.bincount(both["missing_type"], minlength=3).tolist() == [31, 35, 35]


def test_ragpt_protocol_uses_one_global_table():
    dd = DatasetDict({"train": _ids(60), "test": _ids(40)})
    out, settings = simulate_missing(dd, rate=0.5, pattern="both", protocol="ragpt", seed=1, return_settings=True)
    total = np.bincount(list(out["train"]["missing_type"]) + list(out["test"]["missing_type"]), minlength=3)
    assert total.tolist() == [50, 25, 25]
    assert sum(settings["counts"]["train"]) == 60
    per_split = simulate_missing(dd, rate=0.5, pattern="both", protocol="map", seed=1)
    assert np.bincount(per_split["test"]["missing_type"], minlength=3).tolist() == [20, 10, 10]


def test_ragpt_counts_are_those_of_ragpts_generator():
    """RAGPT's generate_missing_table: ``num_missing = int(N * rate)`` (float), then ``num_missing // 2`` miss the
    text and as many the image. MM-IMDb (15,552 + 2,608 + 7,799 = 25,959) at 0.7 "both": 9,085 each. Catches
    counts rounded half up (9,086 each), exact-fraction counts where RAGPT's float product truncates (100 at 0.29:
    RAGPT marks 28), and the single-pattern count."""
    shares = {"missing_text": 0.5, "missing_image": 0.5}
    assert pattern_counts(25959, 0.7, shares, "ragpt") == {"missing_text": 9085, "missing_image": 9085}
    assert pattern_counts(101, 0.7, shares, "ragpt") == {"missing_text": 35, "missing_image": 35}
    assert pattern_counts(100, 0.29, {"missing_image": 1.0}, "ragpt") == {"missing_image": 28}
    assert pattern_counts(25959, 0.7, {"missing_text": 1.0}, "ragpt") == {"missing_text": 18171}


def test_map_counts_are_the_floor_of_the_exact_fraction():
    """The map protocol as the README states it: ``floor(N * rate)`` with the rate read as the decimal it stands
    for (100 at 0.29: 29, where float ``int(100 * 0.29)`` is 28), and ``floor(n * both_ratio)`` of them missing
    the image, the rest the text (MAP's ``random.sample(chosen, int(len * both_ratio))``). Catches rounding instead
    of flooring and the two patterns' counts swapped."""
    assert pattern_counts(100, 0.29, {"missing_image": 1.0}, "map") == {"missing_image": 29}
    shares = pattern_shares("both", ("text", "image"), both_ratio=0.3)
    assert pattern_counts(101, 0.7, shares, "map") == {"missing_text": 49, "missing_image": 21}


@pytest.mark.parametrize(
    ("exact", "expected"),
    [
        # 5 at 1.0 "both": 2.5 + 2.5 round to 3 + 3 > ceil(5); the tie goes to the first pattern, not by name.
        ({"missing_text": Fraction(5, 2), "missing_image": Fraction(5, 2)}, {"missing_text": 2, "missing_image": 3}),
        # An exact count (remainder 0) is never moved: only the two rounded up are candidates.
        ({"a": Fraction(2), "b": Fraction(5, 2), "c": Fraction(5, 2)}, {"a": 2, "b": 2, "c": 3}),
        # The remainder is the fractional part alone: 3.5 and 1.5 tie, so the first one gives back.
        ({"a": Fraction(7, 2), "b": Fraction(3, 2)}, {"a": 3, "b": 2}),
        # Three rounded down (total 4.15, counts 3): the largest remainder (a, 0.45) gets the missing one.
        ({"a": Fraction(29, 20), "b": Fraction(7, 5), "c": Fraction(13, 10)}, {"a": 2, "b": 1, "c": 1}),
        # Half up: 1.6 is 2, not 1.
        ({"a": Fraction(8, 5)}, {"a": 2}),
    ],
)
def test_redeem_rounding_moves_the_counts_nearest_a_tie_by_one(exact, expected):
    """The "redeem" counts: each rounded half up, then moved by one (those nearest their rounding threshold first,
    ties in pattern order) until the total lies within floor and ceil of the exact total. Mutants killed
    (simulate._round_counts): threshold 1/2 -> 1/3; the remainder as value + floor(value); the sort keys dropped or
    reversed; ``>`` -> ``>=`` among the rounded up; ``-= 1`` / ``+= 1`` -> ``= 1``, ``+= 1``/``-= 1``, ``±= 2``."""
    assert _round_counts(exact) == expected


def test_split_keys_are_pinned():
    """A split's table is a function of its name through split_key; these values pin the random streams, so a
    seed's tables (and every published number) stay the same across versions. Mutants killed (simulate.split_key):
    byte order "little" dropped (big-endian) and 8 -> 9 digest bytes."""
    assert split_key("train") == 15782024995084201745
    assert split_key("test") == 7313085519096743583


def test_pattern_shares_as_a_mapping_and_the_default_both_ratio():
    """Shares given as a dict are checked (known names, >= 0, summing to 1; a zero share is allowed) and returned as
    floats; "both" splits evenly by default. Mutants killed (simulate.pattern_shares): default both_ratio 0.5 ->
    1.5; the unknown-name check dropped or inverted; ``or`` -> ``and`` in the check; ``< 0`` -> ``<= 0`` / ``< 1``;
    the sum compared with 2 or not at all; the message or the returned shares replaced by None."""
    two = ("text", "image")
    assert pattern_shares("both", two) == {"missing_text": 0.5, "missing_image": 0.5}
    assert pattern_shares({"missing_text": 1, "missing_image": 0}, two) == {"missing_text": 1.0, "missing_image": 0.0}
    assert pattern_shares({"missing_text": 0.25, "missing_image": 0.75}, two) == {"missing_text": 0.25,
                                                                                  "missing_image": 0.75}
    for bad in ({"missing_audio": 1.0}, {"missing_text": 0.5, "missing_image": 0.4},
                {"missing_text": 1.5, "missing_image": -0.5}):
        with pytest.raises(ValueError, match=r"must use names from \['missing_text', 'missing_image'\].*got \{"):
            pattern_shares(bad, two)


def test_both_ratio_bounds_the_mixed_alias_and_even_shares_for_three_modalities():
    """both_ratio may be 0 or 1 (all incomplete samples miss the text, or the image) but not beyond; "mixed" is
    "both"; with three modalities the six incomplete patterns share evenly. Mutants killed (simulate.pattern_shares):
    the "mixed" alias renamed; ``0.0 <= both_ratio <= 1.0`` -> ``<`` on either side or ``<= 2.0``; the message
    replaced by None; the even share ``1.0 / len`` -> ``1.0 * len`` or ``2.0 / len``."""
    two = ("text", "image")
    assert pattern_shares("both", two, both_ratio=0.0) == {"missing_text": 1.0, "missing_image": 0.0}
    assert pattern_shares("both", two, both_ratio=1.0) == {"missing_text": 0.0, "missing_image": 1.0}
    assert pattern_shares("mixed", two, both_ratio=0.3) == pattern_shares("both", two, both_ratio=0.3)
    with pytest.raises(ValueError, match=r"both_ratio must lie in \[0, 1\], got 1.5"):
        pattern_shares("both", two, both_ratio=1.5)
    three = pattern_shares("mixed", ("text", "image", "audio"))
    assert len(three) == 6 and all(share == pytest.approx(1 / 6) for share in three.values())


def test_deterministic_across_num_proc_and_seed_sensitive():
    ds = _ids(500)
    one = list(simulate_missing(ds, rate=0.7, seed=7, num_proc=1)["missing_type"])
    two = list(simulate_missing(ds, rate=0.7, seed=7, num_proc=2)["missing_type"])
    other = list(simulate_missing(ds, rate=0.7, seed=8)["missing_type"])
    assert one == two
    assert one != other


def test_settings_are_recorded_on_the_dataset():
    ds = simulate_missing(_ids(10), rate=0.4, pattern="text", protocol="map", seed=5)
    settings = missing_settings(ds)
    assert settings["rate"] == 0.4 and settings["seed"] == 5 and settings["protocol"] == "map"
    assert settings["shares"] == {"missing_text": 1.0}
    # One count per pattern, the patterns that stay empty included. Mutant killed (simulate._counts): the bincount's
    # minlength dropped.
    assert settings["counts"] == {"dataset": [6, 4, 0]}


def test_per_epoch_redraw_is_keyed_on_seed_epoch_and_sample(shapes):
    ds = simulate_missing(shapes["train"], rate=0.0, protocol="per_epoch")
    collator = MissingModalityCollator(tiny_processor("vilt"), redraw_rate=0.7, seed=0)
    samples = [ds[i] for i in range(48)]
    first = collator(samples)["missing_type"]
    again = collator(list(reversed(samples)))["missing_type"].flip(0)
    collator.set_epoch(1)
    later = collator(samples)["missing_type"]
    assert torch.equal(first, again)
    assert not torch.equal(first, later)
    assert 0.4 < (first > 0).float().mean() < 0.95


@pytest.mark.parametrize("backbone", ["clip", "vilt"])
def test_collator_inserts_the_papers_dummies(shapes_missing, backbone):
    samples = [shapes_missing["train"][i] for i in range(16)]
    batch = MissingModalityCollator(tiny_processor(backbone))(samples)
    codes = batch["missing_type"]
    no_image = codes == 2
    no_text = codes == 1
    assert (batch["pixel_values"][no_image] == 1).all()
    assert not (batch["pixel_values"][~no_image] == 1).flatten(1).all(1).any()
    assert (batch["attention_mask"][no_text].sum(1) == 2).all()
    assert batch["labels"].tolist() == [s["label"] for s in samples]


def test_redraw_callback_sets_the_epoch():
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from trainer_callbacks import RedrawMissingCallback

    collator = MissingModalityCollator(tiny_processor("clip"), redraw_rate=0.5)
    state = TrainerState()
    state.epoch = 3.0
    RedrawMissingCallback(collator).on_epoch_begin(TrainingArguments("out", report_to="none"), state, TrainerControl())
    assert collator.epoch == 3
    with pytest.raises(ValueError, match="redraw_rate"):
        RedrawMissingCallback(MissingModalityCollator(tiny_processor("clip")))


def test_each_split_table_is_keyed_by_its_name():
    """Catches tables keyed by a split's position in the DatasetDict: there, adding a validation split in front
    changes the test table, and simulating the test split alone gives another table than simulating it with the
    others."""
    splits = {name: Dataset.from_dict({"x": list(range(n))}) for name, n in (("train", 40), ("test", 30))}
    with_val = DatasetDict({"validation": Dataset.from_dict({"x": list(range(20))}), **splits})
    both = simulate_missing(DatasetDict(splits), rate=0.5, seed=3)["test"]["missing_type"]
    assert simulate_missing(with_val, rate=0.5, seed=3)["test"]["missing_type"] == both
    assert simulate_missing(splits["test"], rate=0.5, seed=3, split="test")["missing_type"] == both
    assert simulate_missing(splits["test"], rate=0.5, seed=3, split="train")["missing_type"] != both


def test_three_modality_collator_fills_each_placeholder():
    """Catches a collator that knows only text and image: the audio column is padded with a mask, a missing audio
    becomes one all-zero frame, and the model's placeholder check recognises exactly the missing samples."""
    from hf_missing.backbones.tiny import tiny_backbone
    from hf_missing.backbones.tiny import tiny_processor as processor_of
    from hf_missing.data.synthetic import shapes_dataset

    data = simulate_missing(shapes_dataset(8, 4, audio=True), rate=1.0, pattern="audio",
                            modalities=("text", "image", "audio"), seed=0)["train"]
    interface = MissingModalityForClassification.from_backbone(tiny_backbone("fused_audio"), num_labels=4).interface
    rows = [data[i] for i in range(4)]
    rows[0] = {**rows[0], "missing_type": 0}
    batch = MissingModalityCollator(processor_of("fused_audio"), modalities=interface.inputs)(rows)
    assert batch["audio_mask"][0].sum() == len(rows[0]["audio"]) == batch["audio_features"].shape[1]
    assert batch["audio_mask"][1:].sum(dim=1).tolist() == [1, 1, 1]
    assert interface.modality("audio").is_placeholder(batch).tolist() == [False, True, True, True]


def test_feature_frames_are_checked_before_collation():
    """Catches a collator that pads whatever it gets: frames of the wrong width, empty or non-finite sequences
    raise naming the sample and the column, instead of becoming a silently wrong tensor."""
    from hf_missing.data.modalities import FeatureInputs

    audio = FeatureInputs("audio", width=8)
    with pytest.raises(ValueError, match=r"Sample 3: 'covarep' has shape \(2, 5\), expected \[T, 8\]"):
        audio.check_value([[0.0] * 5] * 2, 3, "covarep")
    with pytest.raises(ValueError, match="mark an absent audio missing"):
        audio.check_value(np.zeros((0, 8)), 0, "audio")
    with pytest.raises(ValueError, match="NaN or infinite"):
        audio.check_value([[float("nan")] * 8], 0, "audio")
    batch = audio.collate([np.ones((2, 8), np.float32), None], processor=None)
    assert batch["audio_mask"].tolist() == [[1, 1], [1, 0]] and audio.is_placeholder(batch).tolist() == [False, True]


def test_one_modality_left_is_a_named_pattern_for_rep_table_2():
    """REP Table 2's "text-only" column keeps the text alone in every incomplete sample. Catches ``only_text`` read
    as "text missing" (the other column) or as one of the two-modality-missing patterns chosen by name order, and a
    two-modality ``only_text`` that differs from "image missing"."""
    three = ("text", "image", "audio")
    assert pattern_shares("only_text", three) == {"missing_image_audio": 1.0}
    assert pattern_shares("only_audio", three) == {"missing_text_image": 1.0}
    assert pattern_shares("only_text", ("text", "image")) == pattern_shares("image", ("text", "image"))
    with pytest.raises(ValueError, match="'only_<modality>'"):
        pattern_shares("only_video", three)



def test_streams_and_non_datasets_are_refused_with_the_fix():
    """An IterableDataset or a plain list raises a TypeError that says why and how to get a map-style Dataset.
    Guards (simulate._check_dataset): both messages replaced by None, their literals prefixed/suffixed with XX,
    upper- or lower-cased, and the type named from None."""
    stream = _ids(4).to_iterable_dataset()
    with pytest.raises(TypeError) as err:
        simulate_missing(stream, rate=0.5)
    message = str(err.value)
    assert message.startswith("simulate_missing needs a map-style Dataset or DatasetDict: the table is drawn over each "
                              "split's size and written by row index, which a streamed IterableDataset does not have.")
    assert "Load the data without streaming=True, or materialise it with Dataset.from_generator(" in message
    assert message.endswith("(yield from iterable), features=iterable.features).")
    with pytest.raises(TypeError, match=r"^simulate_missing needs a datasets\.Dataset or DatasetDict, got list; build "
                                        r"one with Dataset\.from_dict / from_list / load_dataset\.$"):
        simulate_missing([{"x": 1}], rate=0.5)


@pytest.mark.parametrize("seed", [True, 1.5, -1, None])
def test_a_seed_that_is_not_a_non_negative_int_raises(seed):
    """Bools, floats, negative ints and None are refused with the reason (the table is a function of the seed).
    Guards (simulate._validate): ``or`` -> ``and`` in either place of the seed check (True, 1.5 or -1 then pass or
    fail elsewhere), the message replaced by None, its second literal XX-wrapped or upper-cased."""
    pattern = (rf"^seed must be a non-negative int, got {re.escape(repr(seed))}; the table is a function of the seed "
               r"\(None, fresh entropy, would make it irreproducible\), so pass e.g\. seed=0\.$")
    with pytest.raises(TypeError, match=pattern):
        simulate_missing(_ids(4), rate=0.5, seed=seed)


def test_rate_protocol_and_column_errors_name_the_argument():
    """Guards (simulate._real, simulate._validate, simulate.simulate_missing): a bool rate accepted (``or`` ->
    ``and``), the TypeError message None or naming ``type(None)``, the argument names "rate" / "both_ratio" XX-wrapped,
    upper-cased or None, the protocol message None or listing ``list(None)``, the taken-column message None and the
    column not passed on to the check."""
    with pytest.raises(TypeError, match=r"^rate must be a number, got True \(bool\); pass e.g\. rate=0\.5\.$"):
        simulate_missing(_ids(4), rate=True)
    with pytest.raises(TypeError, match=r"^both_ratio must be a number, got '0\.3' \(str\); pass e\.g\. both_ratio="):
        simulate_missing(_ids(4), rate=0.5, both_ratio="0.3")
    with pytest.raises(ValueError, match=r"Unknown protocol 'mplmm'; choose one of \['map', 'ragpt', 'redeem', "):
        simulate_missing(_ids(4), rate=0.5, protocol="mplmm")
    with pytest.raises(ValueError, match=r"column='sample_index' is taken"):
        simulate_missing(_ids(4), rate=0.5, column="sample_index")


def test_numpy_floats_and_fractions_are_read_as_the_rate_they_stand_for():
    """``np.float32(0.29)`` is the rate 0.29 (29 of 100 incomplete, recorded as 0.29), not its binary value; any real
    number works, a Fraction included. Guards (simulate._real): the NumPy branch disabled (``and False``), taken for
    every value (``or True``: ``float("7/10")`` fails), or reading ``str(None)`` / ``None``."""
    out, settings = simulate_missing(_ids(100), rate=np.float32(0.29), pattern="image", return_settings=True)
    assert settings["rate"] == 0.29
    assert np.bincount(out["missing_type"], minlength=3).tolist() == [71, 0, 29]
    fraction = simulate_missing(_ids(100), rate=Fraction(7, 10), seed=3)
    assert np.bincount(fraction["missing_type"], minlength=3).tolist() == [30, 35, 35]


def test_missing_settings_of_an_untouched_dataset_says_what_to_run():
    """Guards (simulate.missing_settings): the message replaced by None, XX-wrapped, lower- or upper-cased."""
    with pytest.raises(ValueError, match=r"^This dataset carries no missing-modality settings; run "
                                         r"hf_missing\.simulate_missing first\.$"):
        missing_settings(_ids(3))


def test_existing_columns_are_kept_unless_overwrite():
    """A second simulation refuses to replace ``missing_type`` (in a Dataset or a DatasetDict) unless overwrite=True;
    it may add another column beside it, keeping a ``sample_index`` that holds the row indices, but refuses one that
    does not. Guards (simulate._check_columns, simulate._is_row_index, simulate._validate, simulate.simulate_missing):
    the messages None, XX-wrapped, upper-cased or with the last index off (``len - 1`` -> ``+ 1`` / ``- 2``); the
    row-index test inverted, given None or broken (values / range None, format "NUMPY", columns None, an argument
    dropped); a DatasetDict checked as one split; the column or overwrite not passed on; overwrite True by default."""
    once = simulate_missing(_ids(10), rate=0.4, seed=1)
    taken = (r"^The dataset already has a 'missing_type' column; pass overwrite=True to replace it, or "
             r"column=<other name> to keep both\.$")
    with pytest.raises(ValueError, match=taken):
        simulate_missing(once, rate=0.4)
    with pytest.raises(ValueError, match=taken):
        simulate_missing(DatasetDict({"train": once}), rate=0.4)
    beside = simulate_missing(once, rate=0.8, seed=1, column="missing_type_80")
    assert beside["sample_index"] == list(range(10)) and beside["missing_type"] == once["missing_type"]
    assert np.bincount(beside["missing_type_80"], minlength=3).tolist() == [2, 4, 4]
    shuffled = once.select([3, 1, 4, 0, 5, 9, 2, 6, 8, 7])
    with pytest.raises(ValueError) as err:
        simulate_missing(shuffled, rate=0.4, column="other")
    message = str(err.value)
    assert message.startswith("The dataset already has a 'sample_index' column that is not the row index 0..9; ")
    assert "dataset.rename_column('sample_index', 'original_index'), drop them with remove_columns('sample_index')" \
        in message and message.endswith(", or pass overwrite=True.")
    again = simulate_missing(shuffled, rate=0.8, seed=1, overwrite=True)
    assert again["sample_index"] == list(range(10))
    assert np.bincount(again["missing_type"], minlength=3).tolist() == [2, 4, 4]


def test_an_empty_split_keeps_the_info_and_gets_the_columns():
    """An empty split (no map() to run) still gets both columns, typed as in a full split, and keeps the dataset's
    info (license, citation) like the others. Guards (simulate._assign): the empty split's info replaced by None or
    dropped."""
    from datasets import DatasetInfo

    data = Dataset.from_dict({"x": list(range(6))}, info=DatasetInfo(license="mit", citation="@misc{x}"))
    out = simulate_missing(DatasetDict({"train": data, "test": data.select([])}), rate=0.5)
    for split in ("train", "test"):
        assert out[split].info.license == "mit" and out[split].info.citation == "@misc{x}"
        assert out[split].features["missing_type"].names == ["complete", "missing_text", "missing_image"]
        assert out[split].features["sample_index"].dtype == "int64"
    assert len(out["test"]) == 0 and out["test"].column_names == ["x", "missing_type", "sample_index"]


def test_the_progress_bar_names_simulate_missing_and_num_proc(capsys):
    """The map that writes the table shows as "simulate_missing (num_proc=N)". Guards (simulate._assign): num_proc
    dropped or None, the description dropped, None, XX-wrapped or upper-cased."""
    import datasets

    disabled = not datasets.is_progress_bar_enabled()
    datasets.enable_progress_bars()
    try:
        simulate_missing(_ids(20), rate=0.5, num_proc=1)
    finally:
        if disabled:
            datasets.disable_progress_bars()
    assert "simulate_missing (num_proc=1)" in capsys.readouterr().err


def test_a_disk_backed_dataset_caches_each_settings_table_apart(tmp_path):
    """A dataset loaded from disk caches map() results by fingerprint: a second rate must not reuse the first rate's
    table, and the same call again reuses its own. Guards (simulate.simulate_missing): the settings digest None or
    of ``json.dumps(None)`` (every call the same fingerprint)."""
    from datasets import load_from_disk

    _ids(100).save_to_disk(str(tmp_path / "ids"))
    data = load_from_disk(str(tmp_path / "ids"))
    low = simulate_missing(data, rate=0.2, seed=0)
    high = simulate_missing(data, rate=0.8, seed=0)
    assert np.bincount(low["missing_type"], minlength=3).tolist() == [80, 10, 10]
    assert np.bincount(high["missing_type"], minlength=3).tolist() == [20, 40, 40]
    assert simulate_missing(data, rate=0.2, seed=0).cache_files == low.cache_files


def test_settings_record_the_arguments_and_both_ratio_reaches_the_counts():
    """Guards (simulate.simulate_missing): the settings keys "pattern", "both_ratio", "modalities", "column",
    "pattern_names" XX-wrapped or upper-cased; a Mapping pattern stored as given (``or True``: a mappingproxy is not
    JSON); both_ratio not passed to pattern_shares; the default seed 0 -> 1; declarations read as names
    (``and False``)."""
    from types import MappingProxyType

    from hf_missing.data.modalities import ImageInputs, TextInputs

    out, settings = simulate_missing(_ids(100), rate=0.5, both_ratio=0.3, column="mt", return_settings=True)
    assert np.bincount(out["mt"], minlength=3).tolist() == [50, 35, 15]
    assert settings["pattern"] == "both" and settings["both_ratio"] == 0.3 and settings["column"] == "mt"
    assert settings["modalities"] == ["text", "image"]
    assert settings["pattern_names"] == ["complete", "missing_text", "missing_image"]
    assert missing_settings(out) == settings
    shares = MappingProxyType({"missing_text": 0.25, "missing_image": 0.75})
    _, mapped = simulate_missing(_ids(8), rate=0.5, pattern=shares, return_settings=True)
    assert mapped["pattern"] == {"missing_text": 0.25, "missing_image": 0.75}
    assert simulate_missing(_ids(30), rate=0.5)["missing_type"] == simulate_missing(_ids(30), rate=0.5,
                                                                                     seed=0)["missing_type"]
    declared = simulate_missing(_ids(30), rate=0.5, modalities=(TextInputs(), ImageInputs()))
    assert declared["missing_type"] == simulate_missing(_ids(30), rate=0.5)["missing_type"]


def test_the_ragpt_table_is_pinned():
    """RAGPT's one table over all splits draws from the stream keyed 0 (a map table's key is its split's name); these
    codes pin it so a seed's RAGPT tables stay the same across versions. Guards (simulate._tables): key 0 -> 1."""
    out = simulate_missing(DatasetDict({"train": _ids(6), "test": _ids(4)}), rate=0.6, protocol="ragpt", seed=0)
    assert list(out["train"]["missing_type"]) == [0, 0, 1, 2, 1, 2]
    assert list(out["test"]["missing_type"]) == [1, 2, 0, 0]


def test_missing_table_codes_are_integers_that_index_the_names():
    """``missing_table`` hands out exactly each count, as integer codes (they index ``patterns.names``). Guards
    (simulate.missing_table): the codes' dtype int64 dropped (float zeros)."""
    patterns = ModalityPattern(("text", "image"))
    codes = missing_table(10, {"missing_text": 3, "missing_image": 2}, patterns, seed=0, key=0)
    names = [patterns.names[c] for c in codes]
    assert names.count("missing_text") == 3 and names.count("missing_image") == 2 and names.count("complete") == 5


def test_a_disk_backed_dataset_never_reuses_another_tables_cache(tmp_path):
    """The cache fingerprint of ``map()`` covers the table itself, not only the sorted settings: a pattern dict given
    in another order assigns other samples (``missing_table`` hands out patterns in the dict's order) and must not be
    served the first order's cached table, and neither must another ``columns=`` mapping whose natural gaps differ.
    Guards (simulate.simulate_missing): a fingerprint from the sorted settings alone (the bug: the second call
    returned the first call's cached codes on a dataset loaded from disk)."""
    from datasets import load_from_disk

    rows = 100
    _ids(rows).add_column("caption", [None if i % 10 == 0 else "x" for i in range(rows)]).save_to_disk(
        str(tmp_path / "ids"))
    data = load_from_disk(str(tmp_path / "ids"))
    in_memory = Dataset.from_dict(data.to_dict(), features=data.features)
    for pattern in ({"missing_text": 0.5, "missing_image": 0.5}, {"missing_image": 0.5, "missing_text": 0.5}):
        expected = simulate_missing(in_memory, rate=0.5, pattern=pattern, seed=0)["missing_type"]
        assert simulate_missing(data, rate=0.5, pattern=pattern, seed=0)["missing_type"] == expected
    for columns in (None, {"text": "caption", "image": "x"}):
        expected = simulate_missing(in_memory, rate=0.5, seed=0, columns=columns)["missing_type"]
        assert simulate_missing(data, rate=0.5, seed=0, columns=columns)["missing_type"] == expected


def test_a_disk_backed_dataset_caches_each_column_name_apart(tmp_path):
    """Two calls with the same table but another ``column=`` write another column: the settings digest must stay in
    the cache fingerprint beside the codes, or the second call is served the first call's cached column. Guards
    (simulate.simulate_missing): the digest None, of ``json.dumps(None)``, or not passed to ``_fingerprint``."""
    from datasets import load_from_disk

    _ids(50).save_to_disk(str(tmp_path / "ids"))
    data = load_from_disk(str(tmp_path / "ids"))
    first = simulate_missing(data, rate=0.4, seed=0, column="first")
    second = simulate_missing(data, rate=0.4, seed=0, column="second")
    assert "first" in first.column_names and "second" in second.column_names
    assert second["second"] == first["first"]
