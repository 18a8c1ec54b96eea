"""How long a REDEEM memory bank's faiss index takes to rebuild from its stored query vectors on load.

The index is never read from a file (faiss's reader is unsafe on untrusted input), so every load of a REDEEM
adapter rebuilds it: exact indexes with :func:`hf_missing.methods.redeem.build_index`, IVF ones from the
layout (centroids and list numbers) the bank stores, without k-means. Prints, for a bank of N random unit
vectors of width D (float16 as stored), the first build, the rebuild on load, one batch of 64 searches, and
whether the rebuilt index returns the same neighbours.

    python benchmarks/redeem_index_rebuild.py --entries 1000000 --width 384
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from hf_missing.methods.redeem import build_index
from hf_missing.methods.redeem.bank import ivf_from_layout, ivf_layout


def bank_vectors(entries: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((entries, width), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--types", nargs="+", default=["flat", "auto"])
    args = parser.parse_args()
    vectors = bank_vectors(args.entries, args.width)
    queries = vectors[:64].astype(np.float32)
    for index_type in args.types:
        start = time.perf_counter()
        index = build_index(vectors, index_type)
        built = time.perf_counter() - start
        start = time.perf_counter()
        layout = ivf_layout(index)
        rebuilt = (ivf_from_layout(vectors, layout, index.nprobe, Path("bank")) if layout
                   else build_index(vectors, index_type))
        reloaded = time.perf_counter() - start
        start = time.perf_counter()
        _, ids = rebuilt.search(queries, 5)
        searched = time.perf_counter() - start
        same = np.array_equal(ids, index.search(queries, 5)[1])
        print(f"{args.entries} x {args.width} {index_type:>5} ({type(index).__name__}): first build {built:.2f} s, "
              f"rebuild on load {reloaded:.2f} s, 64 searches {searched * 1000:.1f} ms, same neighbours: {same}")

if __name__ == "__main__":
    main()
