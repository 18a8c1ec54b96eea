"""How long loading a REDEEM memory bank takes now that its faiss index is rebuilt instead of read.

The index is never read from a file (faiss's reader is unsafe on untrusted input), so every load of a REDEEM
adapter rebuilds it: exact indexes with :func:`hf_missing.methods.redeem.build_index`, IVF ones from the layout
(centroids and list numbers) the bank stores, without k-means. For a bank of N random unit search vectors of
total width D (half text, half image; float16 as stored, one token per modality), prints the first build, the
whole ``MemoryBank.load`` (header and value checks, float32 conversion, index rebuild), one batch of 64 searches,
and whether the loaded index returns the same neighbours as the one that was built.

    python benchmarks/redeem_index_rebuild.py --entries 1000000 --width 384
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from hf_missing.methods.redeem import MemoryBank, build_index


def bank_arrays(entries: int, width: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"content_hash": np.arange(entries, dtype=np.int64)}
    for modality in ("text", "image"):
        vectors = rng.standard_normal((entries, width // 2), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        arrays[f"query.{modality}"] = vectors.astype(np.float16)
        arrays[f"tokens.{modality}"] = vectors[:, None].astype(np.float16)
    return arrays


def measure(arrays: dict[str, np.ndarray], index_type: str) -> str:
    vectors = np.concatenate([arrays["query.text"], arrays["query.image"]], axis=1)
    start = time.perf_counter()
    index = build_index(vectors, index_type)
    built = time.perf_counter() - start
    signature = {"model_type": "clip", "streams": {"text": [vectors.shape[1] // 2, 12], "vision": [768, 12]}}
    bank = MemoryBank(arrays=arrays, index=index, modalities=("text", "image"), signature=signature,
                      index_type=index_type)
    with tempfile.TemporaryDirectory() as folder:
        bank.save(folder)
        start = time.perf_counter()
        loaded = MemoryBank.load(folder)
        load = time.perf_counter() - start
        queries = vectors[:64].astype(np.float32)
        start = time.perf_counter()
        _, ids = loaded.search(queries, 5)
        searched = time.perf_counter() - start
        same = np.array_equal(ids, bank.search(queries, 5)[1])
    return (f"{index_type:>5} ({type(index).__name__}): first build {built:.2f} s, MemoryBank.load {load:.2f} s, "
            f"64 searches {searched * 1000:.1f} ms, same neighbours: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--types", nargs="+", default=["flat", "auto"])
    args = parser.parse_args()
    arrays = bank_arrays(args.entries, args.width)
    for index_type in args.types:
        print(f"{args.entries} x {args.width} {measure(arrays, index_type)}")


if __name__ == "__main__":
    main()
