"""Means with intervals and paired comparisons (hf_missing.significance), the resumable run store and the demo's
paired-difference report."""

import json

import numpy as np
import pytest

from hf_missing.demo import aggregate, comparison_markdown, correct_at
from hf_missing.evaluation import PatternPredictions
from hf_missing.missingness import ModalityPattern
from hf_missing.runstore import RunStore
from hf_missing.significance import compare, mean_interval, paired_bootstrap


def test_mean_interval_is_the_student_t_interval():
    """Catches a normal (z = 1.96) interval or a standard deviation reported as the interval: with 3 values the
    t quantile is 4.303 and the standard error stdev / sqrt(3)."""
    mean, half = mean_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert mean_interval([5.0]) == (5.0, 0.0)


def test_bootstrap_resamples_the_same_items_for_every_seed():
    """Seed 0 gains on items 0-49, seed 1 loses on exactly those: each item's mean difference is 0, so a bootstrap
    that draws the same items for every seed gives [0, 0]; one that resampled each seed's items independently (or
    unpaired) would give a wide interval."""
    reference = np.zeros((2, 100))
    method = np.zeros((2, 100))
    method[0, :50] = 1
    reference[1, :50] = 1
    assert paired_bootstrap(method, reference) == (0.0, 0.0)


def test_bootstrap_pairs_methods_on_their_items():
    """Both methods right on 70 of 100 items, the method on 5 more: an unpaired resample (items drawn separately per
    method) would spread the interval over 0; paired, every resample's difference is in [0, ...] and its low end > 0
    except when the 5 items are rarely drawn."""
    reference = np.zeros((3, 100))
    reference[:, :70] = 1
    method = reference.copy()
    method[:, 70:75] = 1
    low, high = paired_bootstrap(method, reference)
    assert 0.0 <= low < 0.05 < high <= 0.11


def test_bootstrap_refuses_misaligned_runs():
    """Catches silently broadcasting a 1-seed run against 3 seeds or comparing different test splits."""
    with pytest.raises(ValueError, match="same seeds and test split"):
        paired_bootstrap(np.zeros((3, 10)), np.zeros((1, 10)))


def test_significance_needs_both_seed_and_item_intervals_to_exclude_zero():
    """+2 points in every seed (seed interval [2, 2]) carried by 2 of 100 items is not significant (resamples that
    miss both items give 0), a gain on 30 items is; a rule that looked at seeds only would call the first
    significant."""
    reference = np.zeros((3, 100))
    few = reference.copy()
    few[:, :2] = 1
    small = compare(few, reference)
    assert small.difference == pytest.approx(2.0) and small.seed_half_width == 0.0 and not small.significant
    many = reference.copy()
    many[:, :30] = 1
    many[1, 29] = 0
    big = compare(many, reference)
    assert big.significant and big.item_low > 0 and big.cell().endswith("*")
    assert not compare(many[:1], reference[:1]).significant  # one seed: no seed interval, never significant


def test_correct_at_reads_each_sample_under_its_pattern():
    """Catches scoring every sample under the complete pattern, or under a pattern other than the one
    ``codes_at`` assigns it at the rate."""
    patterns = ModalityPattern(("text", "image"))
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    right = np.eye(2)[labels]
    logits = {name: right.copy() for name in patterns.names}
    logits["missing_text"] = 1 - right  # wrong whenever text is dropped
    predictions = PatternPredictions(logits, labels, "single_label", patterns)
    correct = correct_at(predictions, 0.7)
    assert correct["complete"] == [1] * 10 and correct["image"] == [1] * 10
    dropped = predictions.codes_at(0.7, "text") == patterns.names.index("missing_text")
    assert dropped.sum() == 7 and correct["text"] == (~dropped).astype(int).tolist()


def _run(correct: list[int], seed_shift: int = 0) -> dict:
    accuracy = float(np.mean(correct))
    curve = [{"rate": r / 10, "accuracy": accuracy} for r in range(11)]
    return {"method_options": {}, "per_pattern": {"complete": {"accuracy": accuracy}},
            "curves": {"text": curve, "image": curve, "both": curve}, "train_seconds": 1.0, "step_seconds": 1.0,
            "inference_ms_per_sample": 1.0, "trainable_beside_head": 0, "trainable_beside_head_pct": 0.0,
            "collapsed": False, "correct": {c: correct for c in ("complete", "text", "image", "both")}}


def test_demo_report_marks_only_differences_beyond_noise():
    """The paired table compares each method with the baseline seed by seed; catches comparing against the wrong
    method or marking a tie as significant."""
    base = [_run([1] * 60 + [0] * 40) for _ in range(3)]
    better = [_run([1] * 90 + [0] * 10) for _ in range(3)]
    methods = aggregate({"baseline": base, "better": better, "same": base})
    assert methods["baseline"]["vs"] == {}
    assert methods["better"]["vs"]["baseline"]["both"]["difference"] == pytest.approx(30.0)
    table = comparison_markdown(methods)
    better_row = next(line for line in table.splitlines() if line.startswith("| better |"))
    same_row = next(line for line in table.splitlines() if line.startswith("| same |"))
    assert better_row.count("*") == 4 and "*" not in same_row and "both 70%" in table
    assert "against `lora`" not in table


def test_every_method_is_judged_against_lora_too():
    """Issue 19: each seed method against peft's LoRA as well as the frozen baseline; catches comparing only with
    the baseline, or comparing LoRA with itself."""
    base = [_run([1] * 60 + [0] * 40) for _ in range(3)]
    lora = [_run([1] * 80 + [0] * 20) for _ in range(3)]
    methods = aggregate({"baseline": base, "lora": lora, "rep": base})
    assert set(methods["rep"]["vs"]) == {"baseline", "lora"} and set(methods["lora"]["vs"]) == {"baseline"}
    assert methods["rep"]["vs"]["lora"]["both"]["difference"] == pytest.approx(-20.0)
    table = comparison_markdown(methods)
    assert "against `baseline`" in table and "against `lora`" in table


def test_run_store_resumes_and_refuses_other_settings(tmp_path):
    """Catches a store that mixes runs of other settings (or another stage-1 checkpoint) into a table, or loses a
    run when the process stops after it (the file is rewritten after each run)."""
    store = RunStore(tmp_path / "runs.json")
    store.put("rep | both | seed 0", {"accuracy": 0.8}, {"epochs": 3, "backbone": "a"})
    again = RunStore(tmp_path / "runs.json")
    settings = {"epochs": 3, "backbone": "a"}
    assert again.get("rep | both | seed 0", settings) == {"accuracy": 0.8, "settings": settings}
    assert again.get("rep | both | seed 1", {"epochs": 3, "backbone": "a"}) is None
    with pytest.raises(ValueError, match=r"runs.json holds 'rep \| both \| seed 0' trained under .*another"):
        again.get("rep | both | seed 0", {"epochs": 3, "backbone": "b"})
    assert json.loads((tmp_path / "runs.json").read_text())["rep | both | seed 0"]["accuracy"] == 0.8
