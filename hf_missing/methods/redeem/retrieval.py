"""REDEEM's MSA retriever (eq. 1) and RAGPT's multi-channel retriever as a ``datasets`` map, the collator that hands
their columns to the model, and the one call that prepares a model and its training data.

:func:`add_neighbors` runs once over a dataset and adds three kinds of columns:

* ``redeem_neighbors``: bank rows of the K nearest neighbours for each of the P missing patterns (-1 under
  ``retrieval="none"``: no search runs), so that evaluating a sample under any pattern needs no new search.
  ``[P, K]`` under ``retrieval="msa"`` (and "random"): one list per pattern, scored by the sum of the cosines over
  the modalities that pattern keeps (eq. 1, generalised from two modalities: two modalities give row 0 complete,
  text + image cosines summed; "missing_text": image-only; "missing_image": text-only). ``[P, M, K]`` under
  ``retrieval="mcr"`` (RAGPT): per pattern, one list per modality, the rows whose tokens of that modality the
  sample reads (:func:`channel_table`);
* ``redeem_self``: the bank row of the sample itself (found by a hash of its raw values of every modality; -1
  when it is not in the bank). It is excluded from its own neighbours, and it is where the reconstruction target of a
  dropped modality is looked up;
* ``redeem_query_<m>``: the sample's query vector per modality (the router's condition, eq. 2).

:class:`RedeemCollator` picks each sample's neighbour row by its ``missing_type`` and zeroes the query of
every modality the sample misses, so nothing of a dropped modality reaches the model but the loss target.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from ...missingness import MISSING_TYPE_COLUMN
from .bank import BANK_FILE, BankError, MemoryBank, build_memory_bank, content_hashes, embed_batch, raw_values
from .config import RedeemConfig
from .layer import NEIGHBOURS, QUERY, SELF


def redeem_configs(model: Any) -> dict[str, RedeemConfig]:
    """The REDEEM/RAGPT adapter configs of ``model`` (a wrapper or a PeftModel around one), by adapter name."""
    configs = {name: c for name, c in (getattr(model, "peft_config", None) or {}).items()
               if isinstance(c, RedeemConfig)}
    if not configs:
        raise ValueError("The model has no REDEEM or RAGPT adapter; load it with adapter='redeem' (or 'ragpt').")
    return configs


def _wrapper(model: Any) -> Any:
    return model if hasattr(model, "interface") else model.base_model.model


def attach_memory_bank(model: Any, bank: MemoryBank) -> None:
    """Give every REDEEM/RAGPT adapter of ``model`` the bank, after checking it fits (backbone, K, tokens)."""
    wrapper = _wrapper(model)
    for config in redeem_configs(model).values():
        bank.check_model(wrapper, config.bank_tokens)
        if config.num_retrieved >= len(bank):
            raise BankError(f"num_retrieved={config.num_retrieved} needs a memory bank of more than "
                            f"{config.num_retrieved} entries (a training sample never retrieves itself), but it holds "
                            f"{len(bank)}; lower num_retrieved or build the bank from more samples.")
        config.memory_bank = bank


def load_memory_bank(model: Any, folder: str | os.PathLike) -> MemoryBank:
    """Attach the bank saved beside an adapter in ``folder`` (``from_pretrained`` of a Hub repo downloads it)."""
    if not Path(folder).is_dir():
        raise BankError(f"{folder} is not a folder; pass the adapter folder that holds {BANK_FILE} (loading the "
                        "adapter with from_pretrained, from a folder or a Hub repo, attaches its bank itself).")
    bank = MemoryBank.load(folder)
    attach_memory_bank(model, bank)
    return bank


def memory_bank_of(model: Any) -> MemoryBank:
    banks = {id(c.memory_bank): c.memory_bank for c in redeem_configs(model).values()}
    if None in banks.values():
        raise BankError("The REDEEM adapter has no memory bank yet: call prepare_for_training(model, train_dataset, "
                        "collator) or load_memory_bank(model, adapter_folder).")
    return next(iter(banks.values()))


def add_neighbors(dataset: Dataset, model: Any, collator: Any, *, batch_size: int = 32, seed: int = 0) -> Dataset:
    """Eq. 1 once per dataset (a ``datasets`` map): neighbour ids for every missing pattern (as many as the model's
    largest ``num_retrieved``), the sample's own bank row and its query vectors (module docstring). Samples of the
    bank reuse its query vectors; others are embedded with the frozen backbone from the modalities they hold."""
    wrapper, bank = _wrapper(model), memory_bank_of(model)
    configs = list(redeem_configs(model).values())
    modes = {c.retrieval for c in configs}
    if len(modes) > 1:
        raise ValueError(f"The model's REDEEM/RAGPT adapters retrieve differently ({sorted(modes)}), but one set of "
                         "neighbour columns serves them all; give them the same retrieval.")
    config = max(configs, key=lambda c: c.num_retrieved)  # each adapter reads the first num_retrieved neighbours
    k, modalities = config.num_retrieved, wrapper.patterns.modalities
    present = wrapper.patterns.present_matrix().numpy()

    def retrieve(batch: dict[str, list], indices: list[int]) -> dict[str, np.ndarray]:
        features = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        raw = raw_values(features, collator, modalities)
        available = {m: np.array([v is not None for v in values]) for m, values in raw.items()}
        hashes = content_hashes(raw)
        self_rows = bank.rows_of(hashes)
        queries = _queries(wrapper, bank, collator, features, available, self_rows, config.bank_tokens)
        if config.retrieval == "none":  # Table 3 "w/o Retriever": no search; the layer draws noise instead
            neighbours = np.full((len(features), present.shape[0], k), -1, dtype=np.int64)
        elif config.retrieval == "random":
            neighbours = _random(bank, k, hashes, indices, seed, present.shape[0])
        elif config.retrieval == "mcr":
            channels, channel_of = channel_table(present)
            neighbours = _nearest(bank, queries, channels, modalities, k, hashes)[:, channel_of]
        else:
            neighbours = _nearest(bank, queries, present, modalities, k, hashes)
        return {NEIGHBOURS: neighbours, SELF: self_rows, **{QUERY + m: queries[m] for m in modalities}}

    key = hashlib.sha256(f"{dataset._fingerprint}-{bank.key}-{len(bank)}-{k}-{config.retrieval}-{seed}".encode())
    return dataset.map(retrieve, batched=True, batch_size=batch_size, with_indices=True,
                       remove_columns=[c for c in (NEIGHBOURS, SELF, *(QUERY + m for m in modalities))
                                       if c in dataset.column_names],
                       new_fingerprint=key.hexdigest()[:32], desc="REDEEM retrieval")


def evaluation_neighbors(dataset: Dataset, model: Any, collator: Any) -> Dataset:
    """:func:`add_neighbors` for a split to evaluate, refused when the memory bank holds that split: by fingerprint
    (the bank's training source, whatever the split is called: ``from_dict`` splits have no name) or by content
    (every sample of the split has a bank row). Validation splits given to the bank as validation are evaluated."""
    bank = memory_bank_of(model)
    roles = {s.get("role") for s in bank.sources if s.get("fingerprint") == dataset._fingerprint}
    if roles - {"validation"}:
        raise BankError(f"The memory bank was built from this very split (fingerprint {dataset._fingerprint}): "
                        "evaluating it retrieves its own samples' neighbours and labels. Build the bank from the "
                        "training split and evaluate a held-out one.")
    dataset = add_neighbors(dataset, model, collator)
    inside = int((np.asarray(dataset[SELF]) >= 0).sum())
    if not roles and len(dataset) and inside == len(dataset):
        raise BankError(f"all {inside} samples of the split to evaluate are in the memory bank (found by content), "
                        f"which was built from {[s.get('split') for s in bank.sources]}: the bank holds this "
                        "evaluation data. Build the bank from the training split only and evaluate a held-out one.")
    return dataset


def _queries(wrapper: Any, bank: MemoryBank, collator: Any, features: list[dict[str, Any]],
             available: dict[str, np.ndarray], self_rows: np.ndarray, num_tokens: int) -> dict[str, np.ndarray]:
    """Per modality ``[B, D_m]`` float32 query vectors (zeros where the sample lacks the modality). A sample of the
    bank reads its stored vectors whatever else its batch holds (embedded again, beside other samples, its vector
    can differ in the last float16 bit, and with it its neighbours); the others are embedded, float16-rounded as
    the bank's."""
    modalities = wrapper.patterns.modalities
    inside, outside = self_rows >= 0, np.flatnonzero(self_rows < 0)
    out = {m: np.zeros((len(features), bank.width(m)), dtype=np.float32) for m in modalities}
    for m in modalities:
        out[m][inside] = bank.arrays[f"query.{m}"][self_rows[inside]]
    if len(outside):
        held = {m: values[outside] for m, values in available.items()}
        embedded = _embedded_queries(wrapper, collator, [features[i] for i in outside], held, num_tokens)
        for m, (rows, values) in embedded.items():
            out[m][outside[rows]] = values
    return out


def _embedded_queries(wrapper: Any, collator: Any, features: list[dict[str, Any]], available: dict[str, np.ndarray],
                      num_tokens: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per modality, the rows of ``features`` that hold it and their query vectors from the frozen backbone
    (:func:`~hf_missing.methods.redeem.bank.embed_batch`), float16-rounded as the bank's."""
    modalities = wrapper.patterns.modalities
    codes = [wrapper.patterns.code(tuple(m for m in modalities if not available[m][i])) for i in range(len(features))]
    collated = collator([{**f, MISSING_TYPE_COLUMN: c} for f, c in zip(features, codes, strict=True)])
    embedded = embed_batch(wrapper, collated, available, num_tokens)
    return {m: (embedded.rows[m], embedded.query[m].half().float().numpy()) for m in modalities}


def _nearest(bank: MemoryBank, queries: dict[str, np.ndarray], present: np.ndarray, modalities: Sequence[str],
             k: int, hashes: np.ndarray) -> np.ndarray:
    """``[B, P, K]`` neighbours: the top K of the eq. 1 scores (:func:`pattern_queries`) under each row of
    ``present`` (a missing pattern, or a channel of :func:`channel_table`), never a copy of the sample itself (any
    row with its content hash)."""
    batch, patterns = len(hashes), present.shape[0]
    excluded = [bank.copies_of(h) for h in hashes]
    depth = min(k + max(len(rows) for rows in excluded), len(bank))
    _, ids = bank.search(pattern_queries(queries, present, modalities), depth)
    ids = ids.reshape(patterns, batch, -1).transpose(1, 0, 2)
    return np.stack([[_drop_self(row, excluded[b], k) for row in ids[b]] for b in range(batch)])


def pattern_queries(queries: dict[str, np.ndarray], present: np.ndarray, modalities: Sequence[str]) -> np.ndarray:
    """The search vectors ``[P B, sum_m D_m]`` (pattern-major) of a batch's L2-normalised query vectors
    ``queries[m] [B, D_m]`` under each missing pattern p (``present [P, K]``): the modalities' queries side by
    side with the blocks of the modalities p lacks zeroed. Against the bank's vectors (its normalised queries
    side by side) the inner product is eq. 1 generalised to K modalities, ``sum over m available under p of
    cos(q_m, q_m(b))``: the paper's two-modality sum for a complete sample, one cosine when one modality is left."""
    return np.concatenate([np.concatenate([queries[m] * present[p, j] for j, m in enumerate(modalities)], axis=1)
                           for p in range(present.shape[0])])


def channel_table(present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RAGPT's multi-channel retriever (AAAI 2025, "Multi-Channel Retriever"; METHODS_REFERENCE §1E) as search
    channels for the P missing patterns ``present [P, M]``.

    Under pattern p, the tokens of a modality m the sample holds come from m's own channel (the cosine of m alone):
    a complete sample reads the images of its image-to-image neighbours and the texts of its text-to-text ones. The
    tokens of a modality it lacks come from the channel of the modalities it holds: an image-only sample reads both
    modalities of its image-to-image neighbours, a text-only one those of its text-to-text neighbours (with K > 2
    modalities and several held, the sum of their cosines, as eq. 1). REDEEM's MSA retriever (§3.2.1, eq. 1) differs
    for a complete sample only, which it gives one list ranked by the summed cosines (``retrieval="msa"``).

    Returns ``channels [C, M]`` (the modalities whose cosines each channel sums; each distinct channel once, in order
    of first use, so that one search serves every pattern reading it) and ``channel_of [P, M]`` (the channel whose
    neighbours supply modality m's tokens under pattern p).
    """
    single = np.eye(present.shape[1], dtype=present.dtype)
    channels: dict[tuple, int] = {}
    channel_of = np.zeros(present.shape, dtype=np.int64)
    for p, held in enumerate(present):
        for j, has in enumerate(held):
            channel_of[p, j] = channels.setdefault(tuple((single[j] if has else held).tolist()), len(channels))
    return np.array(list(channels), dtype=present.dtype), channel_of


def _drop_self(ids: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
    kept = ids[~np.isin(ids, excluded) & (ids >= 0)][:k]
    if len(kept) < k:
        raise BankError(f"The index returned {len(kept)} of the {k} neighbours asked for; the memory bank is too small "
                        "for num_retrieved (or an approximate index probes too few lists: use index_type='flat').")
    return kept


def _random(bank: MemoryBank, k: int, hashes: np.ndarray, indices: list[int], seed: int,
            patterns: int) -> np.ndarray:
    """Table 3 "Random": K distinct random bank rows other than the sample itself (and its copies), the same for
    every pattern."""
    out = []
    for content_hash, index in zip(hashes, indices, strict=True):
        excluded = bank.copies_of(content_hash)
        drawn = np.random.default_rng([seed, index]).choice(len(bank), min(len(bank), k + len(excluded)),
                                                            replace=False)
        out.append(np.repeat(_drop_self(drawn, excluded, k)[None], patterns, axis=0))
    return np.stack(out)


class RedeemCollator:
    """Wraps a collator (e.g. :class:`~hf_missing.MissingModalityCollator`) and adds, per sample, its neighbour ids
    for its missing pattern, its own bank row and the query vectors of the modalities it holds."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator

    def __getattr__(self, name: str) -> Any:
        if name == "collator":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.collator, name)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        if NEIGHBOURS not in features[0]:
            raise ValueError("Samples have no retrieved neighbours; run hf_missing.methods.redeem.add_neighbors("
                             "dataset, model, collator) first (prepare_for_training does it for the training split).")
        batch = self.collator(features)
        codes = batch[MISSING_TYPE_COLUMN].long()
        neighbours = torch.tensor(np.asarray([f[NEIGHBOURS] for f in features]), dtype=torch.long)
        batch[NEIGHBOURS] = neighbours[torch.arange(len(features)), codes]
        batch[SELF] = torch.tensor([int(f[SELF]) for f in features], dtype=torch.long)
        present = self.collator.patterns.present(codes)
        for j, m in enumerate(self.collator.patterns.modalities):
            query = torch.tensor(np.asarray([f[QUERY + m] for f in features]), dtype=torch.float32)
            batch[QUERY + m] = query * present[:, j, None]
        return batch


def prepare_for_training(model: Any, train_dataset: Dataset, collator: Any, *, validation: Dataset | None = None,
                         index_type: str = "auto", batch_size: int = 32,
                         cache_dir: str | os.PathLike | None = None) -> tuple[Dataset, RedeemCollator]:
    """Build (or reuse) the memory bank from the training (and validation) split, attach it to the model's
    REDEEM/RAGPT adapters and retrieve the training samples' neighbours.

    Returns the training dataset with the neighbour columns and the collator to train with. Evaluate other
    splits after ``add_neighbors(split, model, collator)`` with the returned collator.
    """
    tokens = {c.bank_tokens for c in redeem_configs(model).values()}
    if len(tokens) != 1:
        raise ValueError(f"The model's REDEEM adapters store different bank_tokens {sorted(tokens)}; one bank serves "
                         "them all, so give them the same bank_tokens.")
    sources = [train_dataset, *([validation] if validation is not None else [])]
    bank = build_memory_bank(_wrapper(model), sources, collator, num_tokens=tokens.pop(), index_type=index_type,
                             batch_size=batch_size, cache_dir=cache_dir)
    attach_memory_bank(model, bank)
    return add_neighbors(train_dataset, model, collator, batch_size=batch_size), RedeemCollator(collator)
