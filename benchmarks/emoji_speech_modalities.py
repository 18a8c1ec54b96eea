"""How much of the label each modality of the spoken emoji set predicts alone (and all three together).

A logistic regression per modality on frozen features, fit on the train split, scored (accuracy) on the test split:

- text: bag of words (TF-IDF of word uni- and bigrams) and, with ``--minilm``, MiniLM-L6's mean-pooled last layer;
- image: EfficientNet-Lite0's feature map at 96 px (the fused backbone's image tokens), mean-pooled;
- audio: the speech-embedding frames (:mod:`hf_missing.data.audio`), mean-pooled (and mean + std);
- pairs and all three: the standardised concatenation of the text (bag of words), image and audio (mean) features.

Usage: ``python benchmarks/emoji_speech_modalities.py [--cache-dir DIR] [--per-split N] [--minilm]``; ``--per-split``
keeps the first N samples of each split (the set is built on those samples only).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from datasets import DatasetDict
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import AutoModel, AutoTokenizer

from hf_missing.backbones.fused.modeling import FusedModel, minilm_path
from hf_missing.backbones.fused.processing import image_processor
from hf_missing.data.emoji import load_emoji_dataset
from hf_missing.data.emoji_speech import load_emoji_speech_dataset


def audio_features(split, with_std: bool = False) -> np.ndarray:
    """Mean-pooled (optionally also std-pooled) speech-embedding frames, one row per sample."""
    rows = []
    for frames in split["audio"]:
        frames = np.asarray(frames, dtype=np.float32)
        rows.append(np.concatenate([frames.mean(0), frames.std(0)]) if with_std else frames.mean(0))
    return np.stack(rows)


@torch.no_grad()
def image_features(split, batch_size: int = 64) -> np.ndarray:
    """EfficientNet-Lite0 feature maps at 96 px, mean-pooled over the grid."""
    encoder = FusedModel.from_packaged_encoders().embeddings.image_encoder.eval()
    processor = image_processor()
    out = []
    for start in range(0, len(split), batch_size):
        images = split[start:start + batch_size]["image"]
        pixels = processor(images, return_tensors="pt")["pixel_values"]
        out.append(encoder.extract_features(pixels).mean(dim=(2, 3)).numpy())
    return np.concatenate(out)


@torch.no_grad()
def minilm_features(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """MiniLM-L6's last hidden states, mean-pooled over the attended tokens."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    model = AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        out.append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return np.concatenate(out)


def accuracy(train_x: np.ndarray, train_y: list[int], test_x: np.ndarray, test_y: list[int]) -> float:
    """Test accuracy of a standardised logistic regression fit on the train split."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
    model.fit(train_x, train_y)
    return float((model.predict(test_x) == np.asarray(test_y)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=None, help="where the spoken emoji set is (or gets) saved")
    parser.add_argument("--per-split", type=int, default=None, help="keep the first N samples of each split")
    parser.add_argument("--minilm", action="store_true", help="also score MiniLM-L6 text features")
    args = parser.parse_args()
    base = load_emoji_dataset()
    if args.per_split is not None:
        base = DatasetDict({k: v.select(range(min(args.per_split, len(v)))) for k, v in base.items()})
    data = load_emoji_speech_dataset(args.cache_dir, emoji=base)
    train, test = data["train"], data["test"]
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=1).fit(train["text"])
    features = {
        "text (bag of words)": (words.transform(train["text"]).toarray(), words.transform(test["text"]).toarray()),
        "image (EfficientNet-Lite0, mean)": (image_features(train), image_features(test)),
        "audio (speech embedding, mean)": (audio_features(train), audio_features(test)),
        "audio (speech embedding, mean + std)": (audio_features(train, True), audio_features(test, True)),
    }
    if args.minilm:
        features["text (MiniLM-L6, mean)"] = (minilm_features(train["text"]), minilm_features(test["text"]))
    keys = {"text": "text (bag of words)", "image": "image (EfficientNet-Lite0, mean)",
            "audio": "audio (speech embedding, mean)"}
    for combo in (("text", "image"), ("text", "audio"), ("image", "audio"), ("text", "image", "audio")):
        features[" + ".join(combo)] = tuple(np.concatenate([features[keys[k]][i] for k in combo], axis=1)
                                            for i in range(2))
    majority = float(np.mean(np.asarray(test["label"]) == np.bincount(train["label"]).argmax()))
    results = {"train": len(train), "test": len(test), "majority class": majority}
    results.update({name: accuracy(tr, train["label"], te, test["label"]) for name, (tr, te) in features.items()})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
