"""Property-based tests (hypothesis) of simulate_missing and MissingModalityCollator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hf_missing import MissingModalityCollator, missing_settings, simulate_missing
from hf_missing.data.modalities import ImageInputs
from hf_missing.data.simulate import PROTOCOLS
from hf_missing.data.synthetic import CLASSES, FILLER, tiny_processor
from tests.conftest import make_model

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PROCESSORS = {name: tiny_processor(name) for name in ("clip", "vilt")}
WORDS = sorted({w for c in CLASSES for w in c.split()} | set(FILLER))

percent = st.integers(0, 100)
patterns = st.one_of(st.sampled_from(["text", "image", "both"]),
                     st.integers(0, 10).map(lambda k: {"missing_text": k / 10, "missing_image": 1 - k / 10}))


def _ids(n: int) -> Dataset:
    return Dataset.from_dict({"id": list(range(n))})


def _incomplete_names(pattern) -> set[str]:
    if isinstance(pattern, dict):
        return {name for name, share in pattern.items() if share > 0}
    return {"missing_text", "missing_image"} if pattern == "both" else {f"missing_{pattern}"}


# ---- simulate_missing ------------------------------------------------------------------------------------
@FAST
@given(n=st.integers(0, 40), k=percent, pattern=patterns, protocol=st.sampled_from(PROTOCOLS),
       seed=st.integers(0, 2**32 - 1))
def test_simulate_counts_columns_and_determinism(n, k, pattern, protocol, seed):
    out = simulate_missing(_ids(n), rate=k / 100, pattern=pattern, protocol=protocol, seed=seed)
    codes = np.asarray(out["missing_type"], dtype=int)
    assert out["id"] == list(range(n)) and out["sample_index"] == list(range(n))
    assert missing_settings(out)["counts"]["dataset"] == np.bincount(codes, minlength=3).tolist()
    incomplete = int((codes != 0).sum())
    exact = n * k / 100
    if protocol == "per_epoch":
        assert incomplete == 0
    elif protocol == "map":
        assert incomplete == n * k // 100  # int(N·rate), without float error
    elif protocol == "ragpt":  # RAGPT's float int(N·rate), each pattern's share floored (n // 2 for "both")
        assert int(n * (k / 100)) - 1 <= incomplete <= int(n * (k / 100))
    else:
        assert math.floor(exact) <= incomplete <= math.ceil(exact)
    names = ["complete", "missing_text", "missing_image"]
    assert {names[c] for c in codes if c} <= _incomplete_names(pattern)
    again = simulate_missing(_ids(n), rate=k / 100, pattern=pattern, protocol=protocol, seed=seed)
    assert again["missing_type"] == out["missing_type"]


@FAST
@given(n=st.integers(1, 40), protocol=st.sampled_from(["map", "redeem", "ragpt"]), seed=st.integers(0, 1000))
def test_simulate_extreme_rates(n, protocol, seed):
    assert set(simulate_missing(_ids(n), rate=0.0, protocol=protocol, seed=seed)["missing_type"]) == {0}
    complete = simulate_missing(_ids(n), rate=1.0, protocol=protocol, seed=seed)["missing_type"].count(0)
    assert complete == (n % 2 if protocol == "ragpt" else 0)  # RAGPT: n // 2 of each pattern, the odd one complete


@FAST
@given(n=st.integers(0, 30), k=percent, share=st.floats(0, 1), seed=st.integers(0, 1000))
def test_redeem_counts_split_each_pattern_within_one_of_its_share(n, k, share, seed):
    shares = {"missing_text": share, "missing_image": 1 - share}
    counts = np.bincount(simulate_missing(_ids(n), rate=k / 100, pattern=shares, protocol="redeem",
                                          seed=seed)["missing_type"], minlength=3)
    assert abs(counts[1] - n * k / 100 * share) < 1 and abs(counts[2] - n * k / 100 * (1 - share)) < 1


@FAST
@given(sizes=st.lists(st.integers(0, 12), min_size=1, max_size=3), k=percent, seed=st.integers(0, 1000))
def test_ragpt_table_spans_all_splits_including_empty_ones(sizes, k, seed):
    dd = DatasetDict({f"s{i}": _ids(n) for i, n in enumerate(sizes)})
    out = simulate_missing(dd, rate=k / 100, protocol="ragpt", seed=seed)
    codes = np.concatenate([np.asarray(out[name]["missing_type"], dtype=int) for name in dd])
    assert [len(out[name]) for name in dd] == sizes
    total = int(sum(sizes) * (k / 100))  # RAGPT's int(N·rate), then n // 2 per pattern
    assert int((codes != 0).sum()) == total - total % 2


@pytest.mark.parametrize("rate", [-0.01, 1.01, float("nan")])
def test_simulate_rejects_rates_outside_unit_interval(rate):
    with pytest.raises(ValueError, match="rate"):
        simulate_missing(_ids(3), rate=rate)


# ---- MissingModalityCollator -----------------------------------------------------------------------------
texts = st.one_of(st.lists(st.sampled_from([*WORDS, "zebra", "ü", "😀"]), max_size=80).map(" ".join),
                  st.text(max_size=40)).filter(str.strip)  # blank text is naturally missing, never "present"
colours = st.tuples(st.integers(0, 254), st.integers(0, 255), st.integers(0, 255))  # not pure white: see below


@st.composite
def samples(draw, backbone: str):
    code = draw(st.integers(0, 2))
    max_aspect = 64 if backbone == "clip" else 3  # ViLT resizes very thin images to a zero side (clear error)
    width = draw(st.integers(1, 64))
    height = draw(st.integers(max(1, math.ceil(width / max_aspect)), min(64, width * max_aspect)))
    text = draw(texts) if code != 1 else draw(st.sampled_from([None, "dropped text"]))
    image = Image.new("RGB", (width, height), draw(colours)) if code != 2 else draw(st.sampled_from([None, "x"]))
    if isinstance(image, str):  # a missing image the collator must not even look at
        image = Image.new("CMYK", (width, height))
    return {"text": text, "image": image, "label": draw(st.integers(0, 3)), "missing_type": code}


def _check_batch(batch: dict, features: list[dict], processor, max_length: int | None) -> None:
    codes = [f["missing_type"] for f in features]
    assert batch["missing_type"].tolist() == codes and batch["labels"].tolist() == [f["label"] for f in features]
    pixels = batch["pixel_values"]
    assert pixels.shape[0] == len(features) and pixels.shape[1] == 3
    is_dummy = ImageInputs().is_placeholder(batch).tolist()
    assert is_dummy == [c == 2 for c in codes]
    dummy_ids = processor.tokenizer([""])["input_ids"][0]
    for row, f in enumerate(features):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        if f["missing_type"] == 1:
            assert ids == dummy_ids
        else:
            assert ids[0] == dummy_ids[0] and ids[-1] == dummy_ids[-1]
    if max_length is not None:
        assert batch["input_ids"].shape[1] <= max_length


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), backbone=st.sampled_from(["clip", "vilt"]), size=st.integers(1, 6),
       max_length=st.sampled_from([None, 16]))
def test_collator_builds_consistent_batches(data, backbone, size, max_length):
    features = data.draw(st.lists(samples(backbone), min_size=size, max_size=size))
    processor = PROCESSORS[backbone]
    batch = MissingModalityCollator(processor, max_length=max_length)(features)
    _check_batch(batch, features, processor, max_length)


@FAST
@given(rate=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 1000), epoch=st.integers(0, 5),
       order=st.permutations(list(range(8))))
def test_redraw_depends_on_seed_epoch_and_sample_only(rate, seed, epoch, order):
    collator = MissingModalityCollator(PROCESSORS["clip"], redraw_rate=rate, seed=seed)
    collator.set_epoch(epoch)
    features = [{"text": "red circle", "image": Image.new("RGB", (8, 8), (200, 0, 0)), "sample_index": i}
                for i in range(8)]
    whole = collator(features)["missing_type"].tolist()
    shuffled = collator([features[i] for i in order])["missing_type"].tolist()
    assert [whole[i] for i in order] == shuffled
    if rate == 0.0:
        assert set(whole) == {0}
    if rate == 1.0:
        assert 0 not in whole


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "1", "I", "I;16", "F"])
def test_collator_rejects_non_rgb_images_with_a_clear_error(mode):
    sample = {"text": "red circle", "image": Image.new(mode, (8, 8)), "label": 0, "missing_type": 0}
    with pytest.raises(ValueError, match=rf"image mode '{mode}', expected 'RGB'.*cast_column"):
        MissingModalityCollator(PROCESSORS["clip"])([sample])


def test_collator_errors_on_empty_batches_and_thin_images():
    collator = MissingModalityCollator(PROCESSORS["vilt"])
    with pytest.raises(ValueError, match="empty batch"):
        collator([])
    thin = {"text": "red circle", "image": Image.new("RGB", (1, 300)), "label": 0, "missing_type": 0}
    with pytest.raises(ValueError, match=r"cannot take images of \(width, height\) \[\(1, 300\)\]"):
        collator([thin])


@pytest.mark.parametrize("text", ["", "  \n\t"])
def test_empty_text_marked_present_is_rejected_by_the_collator(text):
    """Catches: an empty or blank text marked present reaching the model as the placeholder (it is naturally
    missing; simulate_missing marks it)."""
    sample = {"text": text, "image": Image.new("RGB", (30, 30), (200, 0, 0)), "label": 0, "missing_type": 0}
    with pytest.raises(ValueError, match=r"has no 'text' \(absent, None or empty\)"):
        MissingModalityCollator(PROCESSORS["clip"])([sample])


def test_text_that_tokenises_to_nothing_marked_present_is_rejected_by_the_model():
    """Catches: a present text whose tokens are only special tokens (here a lone control character) passing as
    real text."""
    sample = {"text": "\x00", "image": Image.new("RGB", (30, 30), (200, 0, 0)), "label": 0, "missing_type": 0}
    batch = MissingModalityCollator(PROCESSORS["clip"])([sample])
    with pytest.raises(ValueError, match="their text is the placeholder"):
        make_model("clip", None)(**batch)


def test_a_real_white_image_is_not_taken_for_the_dummy():
    # ViLT normalises with mean = std = 0.5: a pure-white image becomes the all-ones placeholder exactly.
    sample = {"text": "red circle", "image": Image.new("RGB", (30, 30), (255, 255, 255)), "label": 0,
              "missing_type": 0}
    batch = MissingModalityCollator(PROCESSORS["vilt"])([sample])
    torch.manual_seed(0)
    assert make_model("vilt", None)(**batch).logits.shape == (1, 4)
