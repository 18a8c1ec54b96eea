"""The fused backbone's stage-1 cache records the data it was aligned on: a second dataset is aligned anew instead
of silently reusing the emoji-aligned checkpoint (issue 18 item 5)."""

import json

import pytest
from datasets import Dataset

from hf_missing.backbones.fused import FusedProcessor, alignment
from hf_missing.backbones.fused.alignment import alignment_splits, build_fused_backbone
from hf_missing.backbones.tiny import tiny_backbone, tiny_processor
from hf_missing.data.synthetic import shapes_dataset


@pytest.fixture
def fake_stage1(monkeypatch):
    """Stage 1 replaced by a tiny model (the real one runs EfficientNet); records the data of each alignment."""
    calls = []

    def align(dataset, settings, model=None, processor=None, feature_modalities=None):
        calls.append(len(dataset["train"]))
        parts = tiny_processor("fused")
        return tiny_backbone("fused"), FusedProcessor(parts.tokenizer, parts.image_processor), {"seconds": 0.0}

    monkeypatch.setattr(alignment, "align_fused_backbone", align)
    return calls


def _splits(seed: int) -> dict:
    data = shapes_dataset(n_train=12 + seed, n_test=6, seed=seed)
    return {"train": data["train"], "validation": data["test"]}


def test_another_dataset_gets_its_own_checkpoint(tmp_path, fake_stage1):
    """Catches: the emoji-aligned (here: first) checkpoint served for a second dataset because the cache name
    does not depend on the data."""
    first, second = _splits(0), _splits(1)
    path_a = build_fused_backbone(tmp_path, dataset=first)
    path_b = build_fused_backbone(tmp_path, dataset=second)
    assert path_a != path_b and fake_stage1 == [12, 13]
    assert build_fused_backbone(tmp_path, dataset=first) == path_a and fake_stage1 == [12, 13]  # reused, same data
    record = json.loads((path_b / "stage1.json").read_text())["aligned_on"]
    assert record["splits"]["train"] == {"fingerprint": second["train"]._fingerprint, "rows": 13}
    assert record["labels"] == list(second["train"].features["label"].names)


def test_feature_modalities_get_their_own_checkpoint_and_text_image_keys_stay(tmp_path, fake_stage1):
    """Catches: a three-modality (audio) alignment served the text + image checkpoint of the same data (or the
    reverse) because the cache key ignores the modalities, and a text + image key that changed with the new field
    (every cached emoji checkpoint would be aligned again)."""
    data = _splits(0)
    settings = alignment.Stage1Settings()
    plain = build_fused_backbone(tmp_path, dataset=data)
    audio = build_fused_backbone(tmp_path, dataset=data, feature_modalities={"audio": 96})
    assert plain != audio and fake_stage1 == [12, 12]
    assert "feature_modalities" not in alignment.alignment_record(data, settings)
    assert plain.name.endswith(alignment.alignment_key(alignment.alignment_record(data, settings)))
    record = json.loads((audio / "stage1.json").read_text())["aligned_on"]
    assert record["feature_modalities"] == [["audio", 96]]
    assert build_fused_backbone(tmp_path, dataset=data, feature_modalities={"audio": 64}) not in (plain, audio)


def test_alignment_splits_keep_complete_rows_and_carve_a_validation_split():
    """Catches: stage 1 fed rows without an image or text (it aligns complete pairs), or failing on data with no
    validation split."""
    train = shapes_dataset(n_train=20, n_test=4, seed=0)["train"]
    train = train.map(lambda s, i: {"text": "" if i < 3 else s["text"]}, with_indices=True)
    splits = alignment_splits({"train": train})
    assert len(splits["train"]) + len(splits["validation"]) == 17 and len(splits["validation"]) == 2


def test_multilabel_data_cannot_be_aligned_silently():
    """Catches: stage 1's single-label head trained on multi-hot targets."""
    data = Dataset.from_dict({"text": ["a"], "image": ["x.png"], "label": [[1.0, 0.0]]})
    with pytest.raises(ValueError, match="single-label head"):
        alignment_splits({"train": data})
