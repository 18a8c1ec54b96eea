"""REDEEM's memory bank: frozen-backbone embeddings of the training (and validation) samples, and its faiss index.

Per modality ``m`` (of the backbone's K >= 2) and bank entry the bank stores, as float16:

* ``query.m [N, D_m]``: the search vector, the L2-normalised mean of the backbone's last-layer states over
  m's tokens when the backbone sees m alone (the other modalities masked out of attention), standing in for
  the paper's separate CLIP encoders Psi_t / Psi_v of eq. 1;
* ``tokens.m [N, n, D_m]``: m's first-layer input embeddings (what the CMoE generator and the SAIM prompter
  consume), adaptively average-pooled over m's valid tokens to ``n = bank_tokens`` tokens;

plus ``labels [N, C]`` (one-/multi-hot, for RAGPT's label token) and ``content_hash [N]`` (a hash of each
sample's raw values of every modality, which identifies a training sample for self-exclusion and the
reconstruction target without relying on row order). One file, ``redeem_bank.safetensors`` (memory-mapped on
load, its header, shapes, dtypes and values checked: it comes from untrusted repos). The faiss index over
``[query.m for each modality m]`` side by side is rebuilt from the stored query vectors on every load (with the
saved IVF lists or HNSW graph, checked, as plain arrays) and never read from a faiss file: faiss's reader was not
written for untrusted input (a crafted IVF file maps arbitrary files).
The inner product of two such vectors is the sum of the K cosine similarities (eq. 1, generalised from two
modalities), and zeroing the blocks of the modalities a sample lacks leaves the sum over its available ones.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from datasets import Dataset
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file
from torch.nn import functional as F

from ...cache import default_cache_dir
from ...compat.peft import adapters_bypassed
from ...context import maybe_context
from ..base import MissingMethodLayer, visible_keys
from ..options import is_signature

BANK_FILE = "redeem_bank.safetensors"
BANK_VERSION = 2  # 1 kept a faiss index file beside the bank
EMBEDDING_REVISION = 2  # cache key only: banks before 2 were embedded in the caller's mode (dropout on in training)
CHECK_ROWS = 65_536  # rows checked for non-finite values at a time
SPREAD_ROWS = 4_096  # rows whose statistics the "w/o Retriever" noise takes
IVF_ARRAYS = ("ivf.centroids", "ivf.lists")  # an IVF index's trained layout, saved so a load skips k-means
HNSW_ARRAYS = ("hnsw.levels", "hnsw.neighbors")  # an HNSW index's graph, saved so a load skips the graph build
INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
FLAT_LIMIT = 200_000  # "auto" keeps exact search up to this many entries
HNSW_NEIGHBOURS = 32
HNSW_EF_CONSTRUCTION = 200  # 40 lost incomplete queries in 500-entry clusters at 1M (recall@5 0.77; 200: 1.000)
HNSW_EF_SEARCH = 128  # recall@5 >= 0.991, complete and incomplete, <= 1.34 ms at 1M x 384 (redeem_bank.py)
IVF_TRAIN_PER_LIST = 40
IVF_MIN_PROBES = 16
_DTYPES = {"F16": np.float16, "F32": np.float32, "I32": np.int32, "I64": np.int64}


class BankError(ValueError):
    """A memory bank that cannot serve this model or this request; the message says how to fix it."""


@dataclass
class MemoryBank:
    """Bank arrays (numpy, possibly memory-mapped), their faiss index and what they were built with.

    Attributes:
        arrays: ``query.<m>``, ``tokens.<m>``, ``content_hash`` and optionally ``labels``.
        index: faiss inner-product index over ``[query.<m> for m in modalities]`` (rebuilt on load).
        modalities: modality order of the search vector.
        signature: the backbone signature (type, stream widths and depths) the bank was built with.
        sources: per source dataset, its split name, fingerprint and number of rows.
        key: the build fingerprint (cache key), which also keys the neighbour columns' cache.
        index_type: the :func:`build_index` type the index is (re)built with.
    """

    arrays: dict[str, np.ndarray]
    index: Any
    modalities: tuple[str, ...]
    signature: dict[str, Any]
    sources: list[dict[str, Any]] = field(default_factory=list)
    key: str = ""
    index_type: str = "auto"
    _rows: dict[int, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.arrays["content_hash"].shape[0])

    def __deepcopy__(self, memo: dict) -> MemoryBank:
        return self  # read-only; configs holding it may be deep-copied

    @property
    def num_tokens(self) -> int:
        return int(self.arrays[f"tokens.{self.modalities[0]}"].shape[1])

    def width(self, modality: str) -> int:
        return int(self.arrays[f"query.{modality}"].shape[1])

    def copies_of(self, content_hash: int) -> np.ndarray:
        """Every bank row holding the sample with ``content_hash`` (a training sample and its exact duplicates);
        empty for a sample not in the bank."""
        if self._rows is None:
            hashes = np.asarray(self.arrays["content_hash"])
            order = np.argsort(hashes, kind="stable")
            unique, starts = np.unique(hashes[order], return_index=True)
            self._rows = dict(zip(unique.tolist(), np.split(order, starts[1:]), strict=True))
        none = np.empty(0, dtype=np.int64)
        return self._rows.get(int(content_hash), none) if content_hash >= 0 else none

    def rows_of(self, hashes: np.ndarray) -> np.ndarray:
        """The first bank row of each content hash (the reconstruction target's row), -1 for samples not in the
        bank."""
        return np.array([(self.copies_of(h)[:1].tolist() or [-1])[0] for h in hashes], dtype=np.int64)

    def spread(self, key: str) -> tuple[float, float]:
        """Mean and standard deviation of ``arrays[key]`` over the bank's first :data:`SPREAD_ROWS` entries (the
        "w/o Retriever" noise's statistics, the same for every sample)."""
        values = np.asarray(self.arrays[key][:SPREAD_ROWS], dtype=np.float64)
        return float(values.mean()), float(values.std())

    def lookup(self, key: str, rows: torch.Tensor) -> torch.Tensor:
        """``arrays[key][rows]`` as float32 on ``rows``' device (only those rows are read from disk)."""
        flat = rows.reshape(-1).cpu().numpy()
        values = torch.from_numpy(np.ascontiguousarray(self.arrays[key][flat])).float()
        return values.reshape(*rows.shape, *values.shape[1:]).to(rows.device)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` inner-product search (eq. 1 scores) of float32 ``queries [Q, sum D_m]``."""
        if k > len(self):
            raise BankError(f"Asked for {k} neighbours but the memory bank holds {len(self)} entries; lower "
                            "num_retrieved or build the bank from more training samples.")
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return scores, ids

    def check_model(self, model: Any, num_tokens: int) -> None:
        """Raise when the bank was built with another backbone, other modalities, another token count, other
        widths or another label space than the wrapper ``model``'s."""
        signature, modalities = model.interface.signature(), model.patterns.modalities
        if _streams(self.signature) != _streams(signature):
            raise BankError(
                f"The memory bank was built with a {self.signature['model_type']} backbone with streams "
                f"{_streams(self.signature)[1]} ([hidden size, layers]), but the model is a {signature['model_type']} "
                f"with {_streams(signature)[1]}; rebuild the bank with this model (build_memory_bank)."
            )
        if tuple(modalities) != self.modalities or num_tokens != self.num_tokens:
            raise BankError(f"The memory bank holds modalities {list(self.modalities)} with {self.num_tokens} tokens, "
                            f"but the adapter expects {list(modalities)} with bank_tokens={num_tokens}; rebuild it.")
        widths = {m: model.interface.stream_of(m).hidden_size for m in modalities}
        held = {m: [self.width(m), int(self.arrays[f"tokens.{m}"].shape[2])] for m in modalities}
        labels = self.arrays.get("labels")
        if any(held[m] != [w, w] for m, w in widths.items()) or (
                labels is not None and labels.shape[1] != label_columns(model.config)):
            raise BankError(f"The memory bank's vectors {held} ([query, token] width per modality) or its "
                            f"{None if labels is None else labels.shape[1]} label columns do not fit the model's "
                            f"widths {widths} and {label_columns(model.config)} labels; rebuild the bank.")

    # ---- files -----------------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> None:
        """Write ``redeem_bank.safetensors``: the float16 arrays and what they were built with."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        metadata = {"version": str(BANK_VERSION), "modalities": json.dumps(list(self.modalities)),
                    "signature": json.dumps(self.signature, sort_keys=True), "sources": json.dumps(self.sources),
                    "key": self.key, "index_type": self.index_type}
        layout = ivf_layout(self.index) or hnsw_layout(self.index)
        if "ivf.lists" in layout:
            metadata["nprobe"] = str(faiss.extract_index_ivf(self.index).nprobe)
        if "hnsw.levels" in layout:
            hnsw = self.index.hnsw
            metadata["hnsw"] = json.dumps({"neighbours": hnsw.nb_neighbors(1), "entry_point": hnsw.entry_point,
                                           "ef_search": hnsw.efSearch})
        arrays = {**self.arrays, **layout}
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(folder / BANK_FILE), metadata)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> MemoryBank:
        """Open a saved bank (arrays memory-mapped: rows are read on lookup) after checking its header, shapes,
        dtypes and values, and rebuild its index from the query vectors."""
        path = Path(folder) / BANK_FILE
        if not path.is_file():
            raise BankError(f"{folder} holds no REDEEM memory bank ({BANK_FILE}); build one with "
                            "prepare_for_training(model, train_dataset, collator) and save the adapter again.")
        metadata = _metadata(path)
        modalities = tuple(metadata["modalities"])
        arrays = _memory_map(path)
        layout = {k: arrays.pop(k) for k in (*IVF_ARRAYS, *HNSW_ARRAYS) if k in arrays}
        _check_arrays(arrays, modalities, path)
        vectors = _search_vectors(arrays, modalities, path)
        for m in modalities:
            _check_finite(arrays[f"tokens.{m}"], f"tokens.{m}", path)
        if set(layout) & set(HNSW_ARRAYS):
            index = hnsw_from_layout(vectors, layout, metadata["hnsw"], path)
        elif layout:
            index = ivf_from_layout(vectors, layout, metadata["nprobe"], path)
        else:
            index = build_index(vectors, metadata["index_type"])
        return cls(arrays=arrays, index=index, modalities=modalities,
                   signature=metadata["signature"], sources=metadata["sources"], key=metadata["key"],
                   index_type=metadata["index_type"])


def _metadata(path: Path) -> dict[str, Any]:
    """The bank's metadata, parsed and type-checked (safe_open also validates the header against the file size)."""
    try:
        with safe_open(str(path), framework="np") as f:
            raw = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types for malformed headers
        raise BankError(f"{path} is not a valid safetensors file ({err}); rebuild the bank and save it again.") from err
    if raw.get("version") != str(BANK_VERSION):
        raise BankError(f"{path} is a memory bank of version {raw.get('version')!r}; this hf_missing reads version "
                        f"{BANK_VERSION}. Rebuild the bank (prepare_for_training) and save the adapter again.")
    try:
        metadata = {"modalities": json.loads(raw["modalities"]), "signature": json.loads(raw["signature"]),
                    "sources": json.loads(raw.get("sources", "[]")), "key": raw.get("key", ""),
                    "index_type": raw.get("index_type", "auto"), "nprobe": int(raw.get("nprobe", "1")),
                    "hnsw": json.loads(raw.get("hnsw", "{}"))}
    except (KeyError, TypeError, ValueError, RecursionError) as err:  # json.JSONDecodeError is a ValueError
        raise BankError(f"{path} has malformed metadata ({err!r}); rebuild the bank and save it again.") from err
    modalities, signature = metadata["modalities"], metadata["signature"]
    if not (isinstance(modalities, list) and modalities and all(isinstance(m, str) for m in modalities)
            and is_signature(signature) and isinstance(metadata["sources"], list)
            and metadata["index_type"] in INDEX_TYPES):
        raise BankError(f"{path} has malformed metadata (modalities {modalities!r:.100}, index_type "
                        f"{metadata['index_type']!r:.50}); rebuild the bank and save it again.")
    return metadata


def label_columns(config: Any) -> int:
    """Columns of the bank's one-/multi-hot labels: the classes (two for a binary task with one logit)."""
    multi = config.problem_type == "multi_label_classification"
    return config.num_labels if multi else max(config.num_labels, 2)


def _expected_dtype(name: str, dtype: np.dtype) -> bool:
    """``content_hash`` is int64; every other bank array (queries, tokens, labels) float16 or float32 (the int32
    HNSW layout arrays are checked on their own)."""
    return dtype == np.int64 if name == "content_hash" else dtype in (np.float16, np.float32)


def _check_arrays(arrays: dict[str, np.ndarray], modalities: tuple[str, ...], path: Path) -> None:
    """Exactly the arrays a bank holds, each with its rank and dtype, all with the same number of rows."""
    expected = {"content_hash": 1, "labels": 2, **{f"query.{m}": 2 for m in modalities},
                **{f"tokens.{m}": 3 for m in modalities}}
    needed = set(expected) - {"labels"}
    if not needed <= set(arrays) <= set(expected):
        raise BankError(f"{path} holds arrays {sorted(arrays)}, but a bank over {list(modalities)} holds "
                        f"{sorted(expected)} (labels optional); rebuild the bank and save it again.")
    rows = {name: a.shape[0] if a.ndim else -1 for name, a in arrays.items()}
    bad = [n for n, a in arrays.items() if a.ndim != expected[n] or not _expected_dtype(n, a.dtype)]
    if bad or len(set(rows.values())) != 1 or next(iter(rows.values())) < 1:
        raise BankError(f"{path}: arrays {bad or sorted(rows)} have the wrong rank, dtype or row count ({rows}); "
                        "every array holds one row per bank entry. Rebuild the bank and save it again.")
    for m in modalities:
        tokens = arrays[f"tokens.{m}"].shape
        if not 1 <= tokens[2] == arrays[f"query.{m}"].shape[1] or tokens[1] < 1:
            raise BankError(f"{path}: tokens.{m} and query.{m} have different or zero widths; rebuild the bank.")


def _search_vectors(arrays: dict[str, np.ndarray], modalities: tuple[str, ...], path: Path) -> np.ndarray:
    """The float32 search matrix ``[N, sum D_m]`` (the queries side by side, eq. 1), converted a block of rows at a
    time (torch's float16 conversion is vectorised) and checked for NaN or infinity."""
    widths = [arrays[f"query.{m}"].shape[1] for m in modalities]
    vectors = torch.empty(len(arrays["content_hash"]), sum(widths))
    offsets = np.cumsum([0, *widths])
    for m, begin, end in zip(modalities, offsets[:-1], offsets[1:], strict=True):
        for start in range(0, len(vectors), CHECK_ROWS):
            block = torch.from_numpy(np.array(arrays[f"query.{m}"][start:start + CHECK_ROWS]))
            vectors[start:start + CHECK_ROWS, begin:end] = block
    _check_finite(vectors.numpy(), "query vectors", path)
    return vectors.numpy()


def _check_finite(array: np.ndarray, name: str, path: Path) -> None:
    """Raise unless ``array`` holds no NaN or infinity (read a block of rows at a time)."""
    for start in range(0, len(array), CHECK_ROWS):
        if not np.isfinite(array[start:start + CHECK_ROWS]).all():
            raise BankError(f"{path}: {name} hold NaN or infinite values; the bank is corrupt. Rebuild it.")


def _streams(signature: dict[str, Any]) -> tuple[str, dict[str, list[int]]]:
    return signature["model_type"], {k: list(v) for k, v in signature["streams"].items()}


def _memory_map(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file (header already validated by safe_open) as a read-only ``np.memmap``
    (the format is an 8-byte header length, a JSON header with byte offsets, then the raw little-endian data)."""
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
    arrays = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise BankError(f"{path}: array {name} is {info['dtype']}; a bank holds {sorted(_DTYPES)} arrays. "
                            "Rebuild the bank and save it again.")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if begin == end:
            arrays[name] = np.zeros(shape, dtype=_DTYPES[info["dtype"]])
            continue
        arrays[name] = np.memmap(path, dtype=_DTYPES[info["dtype"]], mode="r", offset=8 + length + begin, shape=shape)
    return arrays


# ---- faiss --------------------------------------------------------------------------------------------
def build_index(vectors: np.ndarray, index_type: str = "auto", nlist: int | None = None,
                nprobe: int | None = None, seed: int = 0, ef_search: int | None = None,
                ef_construction: int | None = None) -> Any:
    """An inner-product faiss index over ``vectors [N, D]`` (float16 or float32).

    ``"flat"``: exact (IndexFlatIP). ``"ivf"``: IndexIVFFlat with ``nlist`` ~ 2 sqrt(N) lists trained by
    k-means on a sample of ``40 nlist`` vectors and ``nprobe`` (default max(16, nlist / 128)) lists searched.
    ``"hnsw"``: IndexHNSWFlat (M 32 links, efConstruction ``ef_construction``, default 200, efSearch ``ef_search``,
    default 128). ``"auto"``: flat up to 200,000 entries, HNSW above.

    Why (``benchmarks/redeem_bank.py``: 1,000,000 x 384 float16 banks of two modality blocks, queries complete and
    with one block zeroed as an incomplete sample's, one faiss thread, CPU ms per query; README "Bank benchmark"):
    HNSW at efConstruction 200 / efSearch 128 finds recall@5 >= 0.999 of complete and >= 0.991 of incomplete queries
    at <= 1.34 ms, with 500 entries per cluster and with the hard 50 (spread 1.0). IVF (2 sqrt(N) lists, 16 probed)
    is exact with 500 per cluster (0.6 ms) but falls to 0.62 complete / 0.45 incomplete with 50; HNSW at
    efConstruction 40 lost incomplete queries (0.77 with 500 per cluster, efSearch 256). The price is the build:
    18-41 minutes of one core at a million (faiss builds the graph on every core), paid once: the graph is saved
    with the bank (:func:`hnsw_layout`) and loaded without a rebuild. ``"ivf"`` suits a bank rebuilt often whose
    samples form large clusters.
    """
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type must be one of {list(INDEX_TYPES)}, got {index_type!r}.")
    n, dim = vectors.shape
    if n == 0:
        raise BankError("The memory bank is empty: there is nothing to index. Build it from a non-empty training set.")
    if index_type == "auto":
        index_type = "flat" if n <= FLAT_LIMIT else "hnsw"
    data = np.ascontiguousarray(vectors, dtype=np.float32)
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction or HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = ef_search or HNSW_EF_SEARCH
    else:
        index = _ivf(data, nlist or max(1, int(2 * np.sqrt(n))), nprobe, seed)
    index.add(data)
    return index


def _ivf(data: np.ndarray, nlist: int, nprobe: int | None, seed: int) -> Any:
    quantizer = faiss.IndexFlatIP(data.shape[1])
    index = faiss.IndexIVFFlat(quantizer, data.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    sample = np.random.default_rng(seed).choice(len(data), min(len(data), IVF_TRAIN_PER_LIST * nlist), replace=False)
    index.cp.seed = seed
    index.train(data[np.sort(sample)])
    index.nprobe = min(nlist, nprobe or max(IVF_MIN_PROBES, nlist // 128))
    return index


def ivf_layout(index: Any) -> dict[str, np.ndarray]:
    """An IVF index's trained layout: its centroids ``[nlist, D]`` and each vector's list ``[N]`` (empty for other
    index types). Saved in the bank, it lets a load rebuild the index without k-means (:func:`ivf_from_layout`)."""
    if not isinstance(index, faiss.IndexIVF):
        return {}
    centroids = index.quantizer.reconstruct_n(0, index.nlist)
    lists = np.empty(index.ntotal, dtype=np.int64)
    for number in range(index.nlist):
        size = index.invlists.list_size(number)
        if size:
            lists[faiss.rev_swig_ptr(index.invlists.get_ids(number), size)] = number
    return {"ivf.centroids": centroids.astype(np.float32), "ivf.lists": lists}


def ivf_from_layout(data: np.ndarray, layout: dict[str, np.ndarray], nprobe: int, path: Path) -> Any:
    """The IVF index over ``data [N, D]`` from a saved layout (checked: finite centroids of width D, one list
    number in ``[0, nlist)`` per vector, ``1 <= nprobe <= nlist``); each vector goes to its saved list."""
    if set(layout) != set(IVF_ARRAYS):
        raise BankError(f"{path} holds {sorted(layout)} but an IVF layout is {list(IVF_ARRAYS)}; rebuild the bank.")
    centroids, lists = layout["ivf.centroids"], np.asarray(layout["ivf.lists"])
    nlist = centroids.shape[0] if centroids.ndim == 2 else 0
    if (nlist < 1 or centroids.shape[1] != data.shape[1] or lists.shape != (len(data),) or lists.dtype != np.int64
            or not 1 <= nprobe <= nlist or lists.min() < 0 or lists.max() >= nlist):
        raise BankError(f"{path}: the IVF layout does not fit the bank (centroids {list(centroids.shape)}, lists "
                        f"{list(lists.shape)} of {lists.dtype}, nprobe {nprobe}, for {list(data.shape)} vectors; list "
                        "numbers must lie in [0, centroids)). Rebuild the bank and save it again.")
    quantizer = faiss.IndexFlatIP(data.shape[1])
    _check_finite(centroids, "ivf.centroids", path)
    quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
    index = faiss.IndexIVFFlat(quantizer, data.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    data, lists = np.ascontiguousarray(data, dtype=np.float32), np.ascontiguousarray(lists)
    index.add_core(len(data), faiss.swig_ptr(data), None, faiss.swig_ptr(lists))
    index.nprobe = nprobe
    return index


def hnsw_layout(index: Any) -> dict[str, np.ndarray]:
    """An HNSW index's graph: each vector's level count ``[N]`` and every neighbour slot ``[sum of the vectors'
    slots]`` (-1 where empty), both int32 (empty for other index types). Saved in the bank, it lets a load rebuild
    the index without building the graph again (:func:`hnsw_from_layout`): minutes for a million vectors, and a
    multi-threaded build draws another graph each time, with other approximate neighbours."""
    if not isinstance(index, faiss.IndexHNSW):
        return {}
    hnsw = index.hnsw
    return {"hnsw.levels": faiss.vector_to_array(hnsw.levels).astype(np.int32),
            "hnsw.neighbors": faiss.vector_to_array(hnsw.neighbors).astype(np.int32)}


def hnsw_from_layout(data: np.ndarray, layout: dict[str, np.ndarray], settings: Any, path: Path) -> Any:
    """The IndexHNSWFlat over ``data [N, D]`` from a saved graph, checked first so that faiss never reads outside
    it: ``settings`` (``neighbours`` M, ``entry_point``, ``ef_search``) in range, one level count in
    ``[1, levels faiss allows for M]`` per vector, exactly the slots those levels give, every neighbour -1 or a
    vector that has the level of its slot, and the entry point on the top level."""
    levels, neighbours = (np.asarray(layout.get(k, np.zeros(0, np.int32))) for k in HNSW_ARRAYS)
    try:
        links, entry, ef = (int(settings[k]) for k in ("neighbours", "entry_point", "ef_search"))
    except (KeyError, TypeError, ValueError) as err:
        raise BankError(f"{path}: malformed HNSW settings {settings!r:.200}; rebuild the bank.") from err
    if set(layout) != set(HNSW_ARRAYS) or not 2 <= links <= 512 or not 1 <= ef <= 2**20:
        raise BankError(f"{path} holds {sorted(layout)} with HNSW settings {settings!r:.200}; an HNSW layout is "
                        f"{list(HNSW_ARRAYS)} with 2 <= neighbours <= 512 and 1 <= ef_search <= 2**20. Rebuild the "
                        "bank.")
    index = faiss.IndexHNSWFlat(data.shape[1], links, faiss.METRIC_INNER_PRODUCT)
    cumulative = faiss.vector_to_array(index.hnsw.cum_nneighbor_per_level).astype(np.int64)
    _check_graph(levels, neighbours, entry, cumulative, len(data), path)
    index.storage.add(np.ascontiguousarray(data, dtype=np.float32))
    index.ntotal = len(data)
    hnsw = index.hnsw
    offsets = np.concatenate([[0], np.cumsum(cumulative[levels])]).astype(np.uint64)
    for array, vector in ((levels, hnsw.levels), (offsets, hnsw.offsets), (neighbours, hnsw.neighbors)):
        faiss.copy_array_to_vector(np.ascontiguousarray(array), vector)
    hnsw.entry_point, hnsw.max_level, hnsw.efSearch = entry, int(levels.max()) - 1, ef
    return index


def _check_graph(levels: np.ndarray, neighbours: np.ndarray, entry: int, cumulative: np.ndarray, n: int,
                 path: Path) -> None:
    """Raise unless the saved HNSW graph fits ``n`` vectors (see :func:`hnsw_from_layout`)."""
    fits = (levels.shape == (n,) and levels.dtype == np.int32 and neighbours.ndim == 1
            and neighbours.dtype == np.int32 and levels.min() >= 1 and levels.max() < len(cumulative))
    fits = fits and neighbours.shape[0] == int(cumulative[levels].sum()) and 0 <= entry < n
    fits = fits and levels[entry] == levels.max() and neighbours.min() >= -1 and neighbours.max() < n
    if fits:  # a slot on level l >= 1 may only link a vector that has level l (faiss reads its level-l slots)
        offsets = np.concatenate([[0], np.cumsum(cumulative[levels])])
        upper = np.flatnonzero(levels > 1)
        counts = cumulative[levels[upper]] - cumulative[1]
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + cumulative[1]
        linked = neighbours[np.repeat(offsets[upper], counts) + within]
        slot_level = np.searchsorted(cumulative, within, side="right") - 1
        fits = bool(np.all((linked < 0) | (levels[np.maximum(linked, 0)] > slot_level)))
    if not fits:
        raise BankError(f"{path}: the HNSW graph does not fit the bank ({list(levels.shape)} levels of "
                        f"{levels.dtype}, {list(neighbours.shape)} neighbour slots of {neighbours.dtype}, entry point "
                        f"{entry}, for {n} vectors); rebuild the bank and save it again.")


# ---- embeddings ---------------------------------------------------------------------------------------
@dataclass
class Embedded:
    """What one batch of samples contributes per modality: rows that had it, its query and its tokens."""

    rows: dict[str, np.ndarray]
    query: dict[str, torch.Tensor]
    tokens: dict[str, torch.Tensor]


def pool_tokens(tokens: torch.Tensor, valid: torch.Tensor, n: int) -> torch.Tensor:
    """Adaptive average pooling of each sample's valid tokens ``tokens[b, valid[b]]`` to ``n`` tokens
    (``[B, L, D]`` -> ``[B, n, D]``); fewer valid tokens than ``n`` are repeated."""
    pooled = [F.adaptive_avg_pool1d(x[v].T[None], n)[0].T for x, v in zip(tokens, valid, strict=True)]
    return torch.stack(pooled)


@torch.no_grad()
def embed_batch(model: Any, batch: dict[str, Any], available: dict[str, np.ndarray], num_tokens: int) -> Embedded:
    """Query vectors and pooled first-layer tokens of each available modality, each computed with that modality
    alone (the others masked out of attention; one forward over the stacked unimodal copies of the batch), in eval
    mode whatever the caller's (a model fresh from ``from_backbone`` trains: its dropout made every bank build and
    every query differ), the caller's mode restored after. The model inputs taken from ``batch`` are those the
    backbone declares (``model.interface.inputs``)."""
    interface, patterns = model.interface, model.patterns
    keys = [name for spec in interface.inputs for name in spec.input_names]
    rows = {m: np.flatnonzero(available[m]) for m in patterns.modalities}
    order = np.concatenate([rows[m] for m in patterns.modalities])
    codes = torch.tensor([patterns.code(tuple(o for o in patterns.modalities if o != m))
                          for m in patterns.modalities for _ in rows[m]], dtype=torch.long)
    inputs = {k: batch[k][torch.from_numpy(order)] for k in keys if batch.get(k) is not None}
    captured: dict[str, dict[str, Any]] = {}
    handles = []
    for stream in interface.streams:
        layers = interface.layers(stream.name)
        handles.append(layers[0].register_forward_pre_hook(_capture_input(captured, stream.name), with_kwargs=True))
        handles.append(layers[-1].register_forward_hook(_capture_output(captured, stream.name)))
    device, was_training = next(model.parameters()).device, model.training
    model.eval()  # the frozen backbone's embeddings: no dropout, no training-time patch draw
    try:
        with adapters_bypassed(model):
            model(**{k: v.to(device) for k, v in inputs.items()}, missing_type=codes.to(device), missing_policy="mask")
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return _split_modalities(interface, captured, rows, num_tokens)


def _capture_input(store: dict, stream: str) -> Callable:
    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        ctx = maybe_context()
        store[stream] = {"input": args[0] if args else kwargs["hidden_states"], "mask": mask,
                         "spans": ctx.spans[stream]}
    return hook


def _capture_output(store: dict, stream: str) -> Callable:
    def hook(_module: torch.nn.Module, _args: tuple, output: Any) -> None:
        store[stream]["output"] = output[0] if isinstance(output, tuple) else output
    return hook


def _split_modalities(interface: Any, captured: dict, rows: dict[str, np.ndarray], num_tokens: int) -> Embedded:
    out = Embedded(rows, {}, {})
    start = 0
    for m, idx in rows.items():
        seg = slice(start, start + len(idx))
        start += len(idx)
        stream = captured[interface.stream_of(m).name]
        span = stream["spans"][m]
        first, last = stream["input"][seg, span].float(), stream["output"][seg, span].float()
        batch, length = stream["input"].shape[:2]
        valid = visible_keys(stream["mask"], batch, length, first.device)[seg, span].cpu()
        if len(idx) == 0:
            out.query[m] = torch.zeros(0, first.shape[-1])
            out.tokens[m] = torch.zeros(0, num_tokens, first.shape[-1])
            continue
        weights = valid.to(last.dtype)[..., None].to(last.device)
        mean = (last * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        out.query[m] = F.normalize(mean, dim=-1).cpu()
        out.tokens[m] = pool_tokens(first.cpu(), valid, num_tokens)
    return out


# ---- content identity -------------------------------------------------------------------------------
def content_hashes(values: dict[str, Sequence[Any]]) -> np.ndarray:
    """A 63-bit hash of each sample's raw values of every modality, in order (-1 when any is missing): text as its
    UTF-8 bytes, an image as its mode, size and pixels, feature frames as their float32 shape and bytes."""
    columns = list(values.values())
    out = np.full(len(columns[0]), -1, dtype=np.int64)
    for i, sample in enumerate(zip(*columns, strict=True)):
        if any(value is None for value in sample):
            continue
        digest = hashlib.blake2b(digest_size=8)
        for value in sample:
            _digest(digest, value)
        out[i] = int.from_bytes(digest.digest(), "little") >> 1
    return out


def _digest(digest: Any, value: Any) -> None:
    if isinstance(value, str):
        digest.update(value.encode("utf-8"))
    elif isinstance(value, Image.Image):
        digest.update(f"{value.mode}{value.size}".encode())
        digest.update(value.tobytes())
    else:
        frames = np.ascontiguousarray(value, dtype=np.float32)
        digest.update(f"{frames.shape}".encode())
        digest.update(frames.tobytes())


def raw_values(features: list[dict[str, Any]], collator: Any, modalities: Sequence[str]) -> dict[str, list]:
    """Each modality's raw value per sample (None where absent), read from the collator's column for it."""
    return {m: [f.get(_column(collator, m)) for f in features] for m in modalities}


def _column(collator: Any, modality: str) -> str:
    """The dataset column of ``modality``: ``collator.column(m)`` (MissingModalityCollator), else its
    ``<m>_column`` attribute, else the modality's name."""
    if callable(getattr(collator, "column", None)):
        return collator.column(modality)
    return getattr(collator, f"{modality}_column", modality)


# ---- building ---------------------------------------------------------------------------------------
def build_memory_bank(model: Any, datasets: Dataset | Sequence[Dataset], collator: Any, *, num_tokens: int = 16,
                      index_type: str = "auto", batch_size: int = 32,
                      cache_dir: str | os.PathLike | None = None) -> MemoryBank:
    """Embed every sample of the training (and validation) ``datasets`` with the frozen backbone of ``model``
    and index them (a ``datasets`` map with a progress bar); cached under ``<cache>/redeem-banks/<fingerprint>``
    and reused.

    ``datasets``: the training split, then any validation splits (recorded as the bank's sources with these roles).
    Every sample must hold every modality (the bank stores complete samples; a simulated
    ``missing_type`` column is ignored: the training set is fully available, as in the paper). A split named
    ``test*`` is refused: the bank must not see test data (a split whatever its name is also refused when it is
    evaluated: :func:`~hf_missing.methods.redeem.retrieval.evaluation_neighbors`).
    """
    datasets = [datasets] if isinstance(datasets, Dataset) else list(datasets)
    for ds in datasets:
        _check_source(ds)
    key = bank_fingerprint(model, datasets, collator, num_tokens, index_type)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "redeem-banks"
    folder = folder / key
    if (folder / BANK_FILE).is_file():
        return MemoryBank.load(folder)
    parts = [_embed_dataset(model, ds, collator, num_tokens, batch_size, key) for ds in datasets]
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    modalities = tuple(model.patterns.modalities)
    vectors = np.concatenate([arrays[f"query.{m}"] for m in modalities], axis=1)
    bank = MemoryBank(arrays=arrays, index=build_index(vectors, index_type), modalities=modalities,
                      signature=model.interface.signature(),
                      sources=[{"split": str(ds.split), "fingerprint": ds._fingerprint, "rows": len(ds),
                                "role": "validation" if i else "train"} for i, ds in enumerate(datasets)],
                      key=key, index_type=index_type)
    bank.save(folder)
    return MemoryBank.load(folder)


def _check_source(dataset: Dataset) -> None:
    if len(dataset) == 0:
        raise BankError("The memory bank is empty: the dataset passed to build it has no rows. Pass the training "
                        "split.")
    if str(dataset.split or "").lower().startswith("test"):
        raise BankError(f"The memory bank must be built from the training (and validation) data, never from the test "
                        f"split (got split {str(dataset.split)!r}): retrieving test samples leaks their labels.")


def bank_fingerprint(model: Any, datasets: Sequence[Dataset], collator: Any, num_tokens: int, index_type: str) -> str:
    """Cache key: the datasets' fingerprints, the backbone (signature and frozen weights: :func:`frozen_tensors`),
    the collator's settings (its modalities' declarations, text truncation included, and their columns)."""
    digest = hashlib.sha256()
    settings = {"version": BANK_VERSION, "embedding": EMBEDDING_REVISION, "signature": model.interface.signature(),
                "datasets": [ds._fingerprint for ds in datasets], "tokens": num_tokens, "index": index_type,
                "collator": [type(collator).__name__, repr(getattr(collator, "inputs", None)),
                             getattr(collator, "columns", None)]}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for name, tensor in frozen_tensors(model):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]


def frozen_tensors(model: Any) -> list[tuple[str, torch.Tensor]]:
    """The backbone tensors the bank is computed from, under their unwrapped names: every tensor of
    ``model.backbone`` except the method layers' own (``base_layer`` is the frozen layer they wrap) and the pooler
    modules (trained, and never read by the bank)."""
    layers = [name for name, module in model.backbone.named_modules() if isinstance(module, MissingMethodLayer)]
    poolers = tuple(f"{name}." for name in model.interface.pooler_modules)
    kept = []
    for name, tensor in model.backbone.state_dict().items():
        owner = next((f"{layer}." for layer in layers if name.startswith(f"{layer}.")), None)
        if owner is not None:
            if not name.startswith(f"{owner}base_layer."):
                continue
            name = owner + name[len(f"{owner}base_layer."):]
        if not name.startswith(poolers):
            kept.append((name, tensor))
    return kept


def _embed_dataset(model: Any, dataset: Dataset, collator: Any, num_tokens: int, batch_size: int,
                   key: str) -> dict[str, np.ndarray]:
    modalities = model.patterns.modalities
    num_labels = label_columns(model.config)

    def embed(batch: dict[str, list]) -> dict[str, np.ndarray]:
        features = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        raw = raw_values(features, collator, modalities)
        absent = [m for m, values in raw.items() if any(v is None for v in values)]
        if absent:
            raise BankError(f"Memory-bank samples must hold every modality {list(modalities)} (the bank stores "
                            f"complete samples), but some lack {absent}; drop the incomplete ones from the bank's "
                            "dataset.")
        complete = [{**f, "missing_type": 0} for f in features]
        collated = collator(complete)
        available = {m: np.ones(len(features), dtype=bool) for m in modalities}
        out = embed_batch(model, collated, available, num_tokens)
        result = {f"query.{m}": out.query[m].half().numpy() for m in modalities}
        result.update({f"tokens.{m}": out.tokens[m].half().numpy() for m in modalities})
        result["content_hash"] = content_hashes(raw)
        if "labels" in collated:
            result["labels"] = _one_hot(collated["labels"], num_labels)
        return result

    mapped = dataset.map(embed, batched=True, batch_size=batch_size, remove_columns=dataset.column_names,
                         new_fingerprint=f"redeem-bank-{key}-{dataset._fingerprint}"[:64],
                         desc="REDEEM memory bank")
    mapped = mapped.with_format("numpy")
    return {name: _array(mapped[name], name) for name in mapped.column_names}


def _array(values: Any, name: str) -> np.ndarray:
    array = np.stack(values) if isinstance(values, list) else np.asarray(values)
    if name == "content_hash":
        return array.astype(np.int64)
    return array.astype(np.float16)


def _one_hot(labels: torch.Tensor, num_labels: int) -> np.ndarray:
    if labels.dim() == 2:
        return labels.half().numpy()
    return F.one_hot(labels.long(), num_labels).half().numpy()
