"""REDEEM memory-bank scale benchmark: build time, batched top-5 query latency and recall@5 of faiss index
configurations for a 1,000,000 x 384 float16 bank, for complete and incomplete queries, against exact search.

Data: a two-modality bank shaped as ``MemoryBank`` stores it: each entry is a "text" block and an "image" block of
``--dim / 2`` each, side by side, each block L2-normalised on its own (the bank's per-modality query vectors).
An entry belongs to one of ``--clusters`` clusters; each block is a Gaussian draw (spread ``--spread``) around its
cluster's random unit centre for that modality, stored as float16. Queries are fresh draws from the same clusters.
Three query kinds, as ``retrieval.pattern_queries`` forms them: ``full`` (both blocks), ``text only`` (the image
block zeroed) and ``image only`` (the text block zeroed). The exact ground truth of every kind is ``IndexFlatIP``
over the same float16 -> float32 vectors searched with the same (zeroed) query.

Every index runs on one faiss thread; ms/query is the time of one batched search of all queries divided by their
number. ``default`` is whatever ``build_index(index_type="auto")`` builds; ``ivf`` and ``hnsw`` are searched at
several ``nprobe`` / ``efSearch`` values of one build.

    python benchmarks/redeem_bank.py                                 # 1M x 384, 2,000 clusters, spread 0.7
    python benchmarks/redeem_bank.py --clusters 20000 --spread 1.0   # the hard distribution
    python benchmarks/redeem_bank.py --size 100000                   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from hf_missing.atomic import atomic_write_text
from hf_missing.methods.redeem import build_index

KINDS = ("full", "text only", "image only")  # text only: the image block zeroed; image only: the text block zeroed
SWEEPS = {"ivf": ("nprobe", (16, 32, 64, 128)), "hnsw": ("efSearch", (32, 64, 128, 192, 256))}
RESULTS = Path(__file__).resolve().parent / "results"


def clustered(n: int, dim: int, centres: np.ndarray, spread: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` float16 entries: per modality block a draw around its cluster's centre, normalised per block."""
    clusters, modalities, width = centres.shape
    out = np.empty((n, dim), dtype=np.float16)
    for begin in range(0, n, 100_000):
        m = min(100_000, n - begin)
        picked = rng.integers(0, clusters, m)
        for j in range(modalities):
            x = centres[picked, j] + spread / np.sqrt(width) * rng.standard_normal((m, width), dtype=np.float32)
            out[begin:begin + m, j * width:(j + 1) * width] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def centres_of(clusters: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Random unit centres ``[clusters, 2, dim / 2]``: one per cluster and modality."""
    centres = rng.standard_normal((clusters, 2, dim // 2), dtype=np.float32)
    return centres / np.linalg.norm(centres, axis=2, keepdims=True)


def query_kinds(queries: np.ndarray) -> dict[str, np.ndarray]:
    """The three query kinds of float32 ``queries``: complete, and with one modality's block zeroed."""
    half = queries.shape[1] // 2
    text_only, image_only = queries.copy(), queries.copy()
    text_only[:, half:] = 0
    image_only[:, :half] = 0
    return dict(zip(KINDS, (queries, text_only, image_only), strict=True))


def timed_search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, float, float]:
    """Neighbour ids of one batched search and its wall-clock and CPU ms per query (after a small warm-up)."""
    index.search(queries[:16], k)
    start, cpu = time.perf_counter(), time.process_time()
    _, ids = index.search(queries, k)
    return ids, *(1000 * (now - then) / len(queries)
                  for now, then in ((time.perf_counter(), start), (time.process_time(), cpu)))


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top k that the index returned."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def set_parameter(index: Any, name: str | None, value: int | None) -> None:
    """Set ``nprobe`` (IVF) or ``efSearch`` (HNSW) on a built index; nothing for ``name`` None."""
    if name == "nprobe":
        faiss.extract_index_ivf(index).nprobe = value
    elif name == "efSearch":
        faiss.downcast_index(index).hnsw.efSearch = value


def search_parameters(index: Any) -> dict[str, int]:
    """The search-time parameters an index was built with (what ``default`` runs at)."""
    if isinstance(index, faiss.IndexIVF):
        return {"nlist": int(index.nlist), "nprobe": int(index.nprobe)}
    if isinstance(index, faiss.IndexHNSW):
        return {"M": int(index.hnsw.nb_neighbors(1)), "efConstruction": int(index.hnsw.efConstruction),
                "efSearch": int(index.hnsw.efSearch)}
    return {}


def measure(name: str, build: Callable[[], Any], kinds: dict[str, np.ndarray], truth: dict[str, np.ndarray],
            k: int) -> list[dict[str, Any]]:
    """Build one configuration and measure every query kind at each of its swept search parameters."""
    start, cpu = time.perf_counter(), time.process_time()
    index = build()
    build_s, build_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    built = search_parameters(index)
    parameter, values = SWEEPS.get(name, (None, (None,)))
    rows = []
    for value in values:
        set_parameter(index, parameter, value)
        row: dict[str, Any] = {"config": name, "index": type(index).__name__, **built, "build_s": round(build_s, 1),
                               "build_cpu_s": round(build_cpu_s, 1)}
        if parameter is not None:
            row[parameter] = value
        for kind, queries in kinds.items():
            ids, ms, cpu_ms = timed_search(index, queries, k)
            row[kind] = {"ms_per_query": round(ms, 3), "cpu_ms_per_query": round(cpu_ms, 3),
                         f"recall@{k}": round(recall(ids, truth[kind]), 4)}
        rows.append(row)
    return rows


def exact(bank: np.ndarray, kinds: dict[str, np.ndarray], k: int) -> tuple[dict[str, np.ndarray], float]:
    """Exact top-k ids of every query kind and the exact search's ms per query (full queries)."""
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    truth, ms = {}, 0.0
    for kind, queries in kinds.items():
        start = time.perf_counter()
        truth[kind] = index.search(queries, k)[1]
        ms = ms or 1000 * (time.perf_counter() - start) / len(queries)
    return truth, ms


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--clusters", type=int, default=2_000)
    parser.add_argument("--spread", type=float, default=0.7)
    parser.add_argument("--configs", nargs="+", default=["ivf", "hnsw"],
                        choices=["default", "flat", "ivf", "hnsw"])
    parser.add_argument("--ef-construction", type=int, default=None,
                        help="HNSW efConstruction (default: build_index's, 200)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: results/redeem-bank-<size>-<clusters>clusters-spread<spread>.json)")
    return parser.parse_args()


def main() -> None:
    args = parse()
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    centres = centres_of(args.clusters, args.dim, rng)
    bank = clustered(args.size, args.dim, centres, args.spread, rng)
    kinds = query_kinds(clustered(args.queries, args.dim, centres, args.spread, rng).astype(np.float32))
    truth, exact_ms = exact(bank, kinds, args.k)
    builders = {"default": lambda: build_index(bank, "auto", seed=args.seed),
                **{t: (lambda t=t: build_index(bank, t, seed=args.seed, ef_construction=args.ef_construction))
                   for t in ("flat", "ivf", "hnsw")}}
    rows = [row for name in args.configs for row in measure(name, builders[name], kinds, truth, args.k)]
    report = {
        "command": "python benchmarks/redeem_bank.py " + " ".join(
            f"--{key.replace('_', '-')} {value}" for key, value in vars(args).items()
            if key not in ("configs", "out") and value is not None) + " --configs " + " ".join(args.configs),
        "bank": [args.size, args.dim], "dtype": "float16", "modalities": ["text", "image"],
        "data": f"{args.clusters} clusters, spread {args.spread}, each modality block normalised",
        "queries": args.queries, "k": args.k, "faiss": faiss.__version__, "faiss_threads": 1,
        "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "timing": "one batched search of all queries on one faiss thread, divided by the number of queries: wall "
                  "clock (ms_per_query) and this process's CPU time (cpu_ms_per_query; the cores were shared)",
        "exact_ms_per_query": round(exact_ms, 3), "results": rows,
    }
    out = args.out or RESULTS / f"redeem-bank-{args.size}-{args.clusters}clusters-spread{args.spread}.json"
    atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
