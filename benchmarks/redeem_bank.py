"""REDEEM memory-bank scale benchmark: build time, batched top-5 query latency and recall@5 of the index that
``build_index(index_type="auto")`` picks for a 1,000,000 x 384 float16 bank, against exact search.

Data: clustered vectors (``--clusters`` Gaussian clusters around random unit centres, within-cluster spread
``--spread``, L2-normalised, stored as float16), the shape of sentence/image embeddings, not uniform noise
(on which no approximate index is meaningful). Queries are fresh draws from the same clusters. Exact ground
truth comes from ``IndexFlatIP`` over the same float16 -> float32 vectors.

    python benchmarks/redeem_bank.py                 # 1M x 384, the targets: build <= 60 s, <= 2 ms/query, R@5 >= 0.95
    python benchmarks/redeem_bank.py --size 100000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import time

import faiss
import numpy as np

from hf_missing.methods.redeem import build_index


def clustered(n: int, dim: int, clusters: int, spread: float, rng: np.random.Generator,
              centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors (float16) drawn around ``clusters`` random unit centres, and the centres."""
    if centres is None:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float16)
    for begin in range(0, n, 100_000):
        m = min(100_000, n - begin)
        x = centres[rng.integers(0, clusters, m)] + spread / np.sqrt(dim) * rng.standard_normal((m, dim)).astype(
            np.float32)
        out[begin:begin + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--spread", type=float, default=0.7)
    parser.add_argument("--index-type", default="auto")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: build_index's)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    bank, centres = clustered(args.size, args.dim, args.clusters, args.spread, rng)
    queries, _ = clustered(args.queries, args.dim, args.clusters, args.spread, rng, centres)
    queries = queries.astype(np.float32)

    start = time.perf_counter()
    index = build_index(bank, args.index_type, nprobe=args.nprobe, seed=args.seed)
    build_s = time.perf_counter() - start
    index.search(queries[:16], args.k)  # warm-up
    start = time.perf_counter()
    _, found = index.search(queries, args.k)
    query_ms = 1000 * (time.perf_counter() - start) / len(queries)

    exact = faiss.IndexFlatIP(args.dim)
    exact.add(np.ascontiguousarray(bank, dtype=np.float32))
    start = time.perf_counter()
    _, truth = exact.search(queries, args.k)
    exact_ms = 1000 * (time.perf_counter() - start) / len(queries)
    recall = float(np.mean([len(set(f) & set(t)) / args.k for f, t in zip(found, truth, strict=True)]))
    print(json.dumps({
        "bank": [args.size, args.dim], "dtype": "float16", "data": f"{args.clusters} clusters, spread {args.spread}",
        "index": type(index).__name__, "nlist": getattr(index, "nlist", None), "nprobe": getattr(index, "nprobe", None),
        "threads": faiss.omp_get_max_threads(), "cpus": os.cpu_count(), "build_s": round(build_s, 2),
        "query_ms_batched": round(query_ms, 4), "exact_query_ms_batched": round(exact_ms, 4),
        f"recall@{args.k}": round(recall, 4), "queries": args.queries,
    }, indent=2))


if __name__ == "__main__":
    main()
