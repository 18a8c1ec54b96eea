"""MMSA feature files (CH-SIMS / MOSI / MOSEI pickles) and CMU-MultimodalSDK computational sequences (.csd), read
from small fixtures that the tests write in those layouts."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from hf_missing.data.csd import align_csd, load_csd
from hf_missing.data.sentiment import load_mmsa_features

h5py = pytest.importorskip("h5py")


# ---- MMSA pickles ------------------------------------------------------------------------------------------------
def mmsa_split(n: int = 3, seed: int = 0) -> dict:
    """One split as MMSA-FET writes it: zero-padded [N, L, F] arrays, frame counts, labels, ids, raw text."""
    rng = np.random.default_rng(seed)
    return {
        "text": rng.normal(size=(n, 4, 3)).astype(np.float32),
        "audio": rng.normal(size=(n, 5, 2)),  # float64, as MMSA-FET's np.zeros padding leaves it
        "vision": rng.normal(size=(n, 6, 2)).astype(np.float32),
        "audio_lengths": [5, 0, 3][:n],
        "vision_lengths": np.array([1, 6, 2][:n]),
        "regression_labels": np.array([0.4, -1.2, 0.0][:n]),
        "classification_labels": np.array([2, 0, 1][:n]),
        "regression_labels_T": np.array([1.0, 0.0, -1.0][:n]),
        "id": np.array(["v1$_$1", "v1$_$2", "v2$_$1"][:n], dtype=object),
        "raw_text": ["good", "bad", "fine"][:n],
        "text_bert": np.zeros((n, 3, 4)),
    }


def write_pickle(folder, data: dict, protocol: int = 4) -> str:
    path = os.path.join(folder, "unaligned_50.pkl")
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=protocol)
    return path


@pytest.fixture
def mmsa_file(tmp_path):
    return write_pickle(tmp_path, {"train": mmsa_split(3, 0), "valid": mmsa_split(2, 1), "test": mmsa_split(1, 2)})


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_mmsa_round_trip_keeps_every_sample_frame_and_label(tmp_path, protocol):
    """Catches a loader that keeps padding frames past audio_lengths / vision_lengths, turns a sample without frames
    into an empty or zero sequence instead of None (natural missingness), loses the order of samples, mixes up the
    splits' names, or fails on the protocol-2 pickles (``_codecs.encode``) and protocol-5 ones (``_frombuffer``)
    that the restricted unpickler must still read."""
    data = {"train": mmsa_split(3, 0), "valid": mmsa_split(2, 1), "test": mmsa_split(1, 2)}
    ds = load_mmsa_features(write_pickle(tmp_path, data, protocol), allow_pickle=True)
    assert list(ds) == ["train", "validation", "test"]
    train, source = ds["train"], data["train"]
    assert train.num_rows == 3 and train["id"] == ["v1$_$1", "v1$_$2", "v2$_$1"]
    np.testing.assert_allclose(train["label"], [0.4, -1.2, 0.0], rtol=1e-6)
    assert train["classification_label"] == [2, 0, 1] and train["label_T"] == [1.0, 0.0, -1.0]
    assert train["raw_text"] == ["good", "bad", "fine"]
    np.testing.assert_allclose(train[0]["audio"], source["audio"][0].astype(np.float32))
    assert train[1]["audio"] is None
    np.testing.assert_allclose(train[2]["audio"], source["audio"][2, :3].astype(np.float32))
    assert [len(v) for v in train["vision"]] == [1, 6, 2]
    assert [len(v) for v in train["text"]] == [4, 4, 4]  # no text lengths in the layout: every stored frame
    np.testing.assert_allclose(train[1]["text"], source["text"][1])
    assert "text_bert" not in train.column_names


def test_mmsa_refuses_without_allow_pickle(mmsa_file):
    """Catches a loader that unpickles by default: the error names the file and the explicit fix."""
    with pytest.raises(ValueError, match=r"unaligned_50\.pkl is a pickle .*allow_pickle=True"):
        load_mmsa_features(mmsa_file)


@pytest.mark.parametrize("source", ["https://example.org/MOSI/unaligned_50.pkl", "thuiar/MOSI"])
def test_mmsa_refuses_urls_and_hub_ids(source):
    """Catches a pickle loader that would fetch a file (a URL, a Hub repo id) and unpickle a download, even when
    the caller passed allow_pickle=True."""
    with pytest.raises((ValueError, FileNotFoundError), match="never"):
        load_mmsa_features(source, allow_pickle=True)


def test_mmsa_refuses_files_in_the_hub_cache(tmp_path, monkeypatch, mmsa_file):
    """Catches a loader that unpickles a file lying in the Hugging Face download cache (a download, whatever the
    caller says)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="Hugging Face cache"):
        load_mmsa_features(mmsa_file, allow_pickle=True)


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_even_with_allow_pickle(tmp_path):
    """Catches a loader that calls pickle.load (or np.load(allow_pickle=True)) itself: a file whose reduce calls
    os.system must be refused by the restricted unpickler before the call runs."""
    marker = tmp_path / "pwned"
    path = write_pickle(tmp_path, {"train": {"audio": _Exploit(str(marker))}, "valid": {}, "test": {}})
    with pytest.raises(ValueError, match=r"refused: the file calls (posix|os|nt)\.system"):
        load_mmsa_features(path, allow_pickle=True)
    assert not marker.exists()


def test_pickled_torch_tensors_are_refused_with_a_fix(tmp_path):
    """Catches an unpickler that allows torch's rebuild functions (torch storages unpickle through torch.load, i.e.
    an unrestricted unpickler): MMSA-FET's return_type='pt' files are refused with the way out."""
    split = mmsa_split()
    split["audio"] = torch.from_numpy(split["audio"])
    path = write_pickle(tmp_path, {"train": split, "valid": mmsa_split(), "test": mmsa_split()})
    with pytest.raises(ValueError, match=r"torch tensors .*re-save it with numpy arrays"):
        load_mmsa_features(path, allow_pickle=True)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("audio", np.zeros((3, 5)), r"\['train'\]\['audio'\] must be a numpy array \[N=3, frames, features\]"),
    ("vision", np.zeros((2, 6, 2)), r"\['vision'\] must be a numpy array \[N=3"),
    ("audio_lengths", [5, 0], r"\['audio_lengths'\] must hold one non-negative frame count per sample \(3\)"),
    ("audio_lengths", [5, -1, 2], r"\['audio_lengths'\] must hold one non-negative frame count"),
    ("id", ["a", "b"], r"\['id'\] must hold one string per sample \(3\)"),
    ("regression_labels", np.array([0.1, np.nan, 0.2]), r"\['regression_labels'\] holds NaN"),
    ("regression_labels", np.zeros((3, 2)), r"\['regression_labels'\] must be a numeric vector"),
    ("text", np.array([[["a"]]] * 3, dtype=object), r"\['text'\] holds object values, not numbers"),
    ("classification_labels", np.array([0.5, 1, 2]), "non-integral"),
])
def test_mmsa_bad_arrays_name_the_file_and_key(tmp_path, key, value, message):
    """Catches a loader that builds a dataset from arrays of the wrong rank, sample count, dtype or values (a
    silently misaligned or truncated column): the error names the file, the split and the key."""
    split = mmsa_split()
    split[key] = value
    path = write_pickle(tmp_path, {"train": split, "valid": mmsa_split(), "test": mmsa_split()})
    with pytest.raises(ValueError, match=r"unaligned_50\.pkl\['train'\]" + f".*{message}|{message}"):
        load_mmsa_features(path, allow_pickle=True)


def test_mmsa_missing_keys_and_splits_are_named(tmp_path):
    """Catches a loader that skips a split or a required key instead of saying what the file lacks."""
    with pytest.raises(ValueError, match=r"not MMSA's dict of splits \['train', 'valid', 'test'\]"):
        load_mmsa_features(write_pickle(tmp_path, {"train": mmsa_split()}), allow_pickle=True)
    split = mmsa_split()
    del split["vision"]
    with pytest.raises(ValueError, match=r"\['train'\] has no \['vision'\]"):
        load_mmsa_features(write_pickle(tmp_path, {"train": split, "valid": split, "test": split}),
                           allow_pickle=True)


def test_mmsa_nonfinite_audio_is_refused_or_zeroed(tmp_path):
    """Catches -inf audio (COVAREP silence) reaching the model as -inf, or being zeroed without the caller asking
    (MMSA's and MPLMM's own loaders zero it: nonfinite='zero')."""
    split = mmsa_split()
    split["audio"][0, 1, 0] = -np.inf
    path = write_pickle(tmp_path, {"train": split, "valid": mmsa_split(), "test": mmsa_split()})
    with pytest.raises(ValueError, match=r"\['audio'\] holds 1 NaN or infinite value.*nonfinite='zero'"):
        load_mmsa_features(path, allow_pickle=True)
    frames = load_mmsa_features(path, allow_pickle=True, nonfinite="zero")["train"][0]["audio"]
    assert frames[1][0] == 0.0 and np.isfinite(frames).all()


def test_mmsa_lengths_beyond_the_stored_frames_are_logged(tmp_path, caplog):
    """Catches a loader that silently keeps fewer frames than a sample's recorded length (MMSA-FET truncates long
    sequences when it writes the file) or crashes on it: the stored frames are kept and the count is logged."""
    split = mmsa_split()
    split["audio_lengths"] = [9, 0, 3]
    path = write_pickle(tmp_path, {"train": split, "valid": mmsa_split(), "test": mmsa_split()})
    ds = load_mmsa_features(path, allow_pickle=True)
    assert len(ds["train"][0]["audio"]) == 5
    assert "1 sample(s) record more frames than the 5 stored" in caplog.text


# ---- CMU-MultimodalSDK .csd --------------------------------------------------------------------------------------
def write_csd(path, name: str, entries: dict, metadata: dict | None = None) -> str:
    """A computational sequence as the SDK's write_CSD writes it."""
    with h5py.File(path, "w") as f:
        root = f.create_group(name)
        data = root.create_group("data")
        for key, (intervals, features) in entries.items():
            entry = data.create_group(key)
            entry.create_dataset("features", data=np.asarray(features))
            entry.create_dataset("intervals", data=np.asarray(intervals, dtype=np.float64))
        meta = root.create_group("metadata")
        for key, value in (metadata or {"root name": name, "dimension names": ["x"]}).items():
            meta.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
            meta[key][0] = json.dumps(value)
    return str(path)


@pytest.fixture
def csd_files(tmp_path):
    """MOSI-like sequences: labels per video (one row per segment), audio per video (frames with intervals), and
    text already aligned to the segments (``<video>[<i>]`` keys)."""
    labels = write_csd(tmp_path / "labels.csd", "Opinion Segment Labels", {
        "v1": ([[0, 1], [1, 2], [2, 2]], [[1.5], [-0.5], [3.0]]),  # the third segment has zero duration
        "v2": ([[0, 1]], [[0.0]]),
        "v3": ([[0, 1]], [[-2.0]]),
    })
    audio = write_csd(tmp_path / "covarep.csd", "COVAREP", {
        "v1": ([[0, .5], [.5, 1], [1, 1.5], [1.5, 2]], np.arange(8.0).reshape(4, 2)),
        "v2": ([[5, 6]], np.ones((1, 2))),  # no frame inside v2's segment
        "v3": ([[0.5, 1], [0, 0.5]], [[8.0, 8.0], [7.0, 7.0]]),  # rows out of time order
    })
    text = write_csd(tmp_path / "glove.csd", "glove_vectors", {
        "v1[0]": ([[0, .5], [.5, 1]], np.ones((2, 3))),
        "v1[1]": ([[1, 2]], np.zeros((1, 3))),
        "v2[0]": ([[0, 1]], np.full((1, 3), 2.0)),
        "v3[0]": ([[0, 1]], np.full((1, 3), 3.0)),
    })
    return {"labels": labels, "audio": audio, "text": text}


def test_load_csd_reads_entries_and_metadata(csd_files):
    """Catches a reader that loses the root name, decodes the metadata wrongly (the SDK stores JSON strings) or
    keeps features in float64 / intervals out of step."""
    seq = load_csd(csd_files["audio"])
    assert seq.name == "COVAREP" and seq.metadata == {"root name": "COVAREP", "dimension names": ["x"]}
    intervals, features = seq.entries["v1"]
    assert features.dtype == np.float32 and features.shape == (4, 2) and intervals.shape == (4, 2)
    assert seq.width == 2


def test_align_csd_joins_by_segment_and_splits_by_video_folds(csd_files, caplog):
    """Catches an alignment that mixes frames of other segments into a segment (no interval cut, or a frame that
    only touches the segment's end kept), keeps a video's rows out of time order (the SDK sorts them), drops a segment
    that lacks one modality instead of marking it missing (None), numbers segments differently from the SDK
    (``<video>[<row>]``), assigns folds by segment instead of video id, or skips zero-length segments silently."""
    ds = align_csd({"text": csd_files["text"], "audio": csd_files["audio"]}, csd_files["labels"],
                   folds={"train": ["v1"], "valid": ["v2"], "test": ["v3"]})
    assert list(ds) == ["train", "valid", "test"]
    train = ds["train"]
    assert train["id"] == ["v1[0]", "v1[1]"] and train["label"] == [1.5, -0.5]
    assert train[0]["audio"] == [[0.0, 1.0], [2.0, 3.0]] and train[1]["audio"] == [[4.0, 5.0], [6.0, 7.0]]
    assert train[0]["text"] == [[1.0] * 3] * 2
    assert ds["valid"][0]["audio"] is None and ds["valid"][0]["text"] == [[2.0] * 3]
    assert ds["test"]["label"] == [-2.0] and ds["test"][0]["audio"] == [[7.0, 7.0], [8.0, 8.0]]
    assert "1 labelled segment(s) of zero duration skipped" in caplog.text
    assert "1 of 4 segment(s) have no audio frame" in caplog.text


def test_align_csd_folds_must_cover_or_drop(csd_files, caplog):
    """Catches segments of videos outside every fold vanishing without a word (or overlapping folds accepted)."""
    with pytest.raises(ValueError, match=r"1 labelled video\(s\) are in no fold \(\['v3'\]"):
        align_csd({"audio": csd_files["audio"]}, csd_files["labels"], folds={"train": ["v1"], "test": ["v2"]})
    ds = align_csd({"audio": csd_files["audio"]}, csd_files["labels"], folds={"train": ["v1"], "test": ["v2"]},
                   unassigned="drop")
    assert ds["train"].num_rows == 2 and ds["test"].num_rows == 1
    assert "1 labelled video(s) in no fold dropped" in caplog.text
    with pytest.raises(ValueError, match="folds must not overlap"):
        align_csd({"audio": csd_files["audio"]}, csd_files["labels"], folds={"train": ["v1"], "test": ["v1"]})
    assert list(align_csd({"audio": csd_files["audio"]}, csd_files["labels"])) == ["all"]


def test_align_csd_refuses_an_unrelated_sequence(csd_files, tmp_path):
    """Catches an alignment that returns an all-None modality when the file belongs to another dataset."""
    other = write_csd(tmp_path / "other.csd", "FACET", {"zz": ([[0, 1]], np.ones((1, 2)))})
    with pytest.raises(ValueError, match=r"other\.csd \(vision\) has no frame for any labelled segment"):
        align_csd({"vision": other}, csd_files["labels"])


@pytest.mark.parametrize(("entries", "message"), [
    ({"v1": ([[0, 1]], np.ones((2, 2)))}, r"data/v1: features \(2, 2\) and intervals \(1, 2\) must be"),
    ({"v1": ([[0, 1]], np.ones((1, 2))), "v2": ([[0, 1]], np.ones((1, 3)))}, "has 3 columns where earlier"),
    ({"v1": ([[0, 1]], np.array([[np.nan, 1.0]]))}, r"data/v1/features holds 1 NaN"),
])
def test_load_csd_bad_entries_name_file_and_entry(tmp_path, entries, message):
    """Catches a reader that accepts features out of step with their intervals, entries of different widths (a
    ragged modality column) or NaN features."""
    path = write_csd(tmp_path / "bad.csd", "bad", entries)
    with pytest.raises(ValueError, match=message):
        load_csd(path)


def test_load_csd_checks_sizes_before_reading_and_the_format(tmp_path):
    """Catches a reader that allocates whatever a file declares (a compressed bomb) or calls a non-HDF5 file a
    sequence."""
    path = write_csd(tmp_path / "big.csd", "big", {"v1": ([[0, 1]] * 100, np.ones((100, 4)))})
    with pytest.raises(ValueError, match=r"declares .* GiB of arrays, more than max_bytes"):
        load_csd(path, max_bytes=1000)
    (tmp_path / "not.csd").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 computational sequence"):
        load_csd(tmp_path / "not.csd")
    with h5py.File(tmp_path / "two.csd", "w") as f:
        f.create_group("a")
        f.create_group("b")
    with pytest.raises(ValueError, match="has exactly one"):
        load_csd(tmp_path / "two.csd")
