"""Loading adapters that others share, safely: the checks every adapter passes before it reaches a model.

Threat model (the README's "Loading shared adapters"): an adapter folder or Hub repo is untrusted data.
Loading reads only ``adapter_config.json``, ``config.json``, ``adapter_model.safetensors`` and the
safetensors files a method declares (:attr:`MethodHooks.files`); nothing else is downloaded or opened, no
pickle or faiss file is ever deserialised and no remote code runs. Nothing from those files reaches a
``from_pretrained`` keyword: ``model_settings`` is an allow-list of typed, range-checked head settings
(:func:`check_settings`). Before anything is allocated, a dry run on the meta device measures what the
adapter config asks for (:func:`plan_adapter`) against :data:`MAX_ADAPTER_BYTES`, a limit the user may
raise in code (``max_adapter_bytes=``) but never the file. The weights file may hold exactly the tensors
that dry run creates (the method's own, the head and the pooler), each of that shape, of a float dtype and
finite (:func:`read_adapter_weights`). Every refusal is an :class:`AdapterLoadError` naming the file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import AutoModel, PretrainedConfig

from .context import POLICIES

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "config.json"
MISSING_SETTINGS_NAME = "missing_settings.json"  # the training split's missing-modality settings (hf-missing train)
CHECKPOINT_PREFIX = "base_model.model."  # transformers' PEFT-format keys of a saved adapter
RESUME_INDEX_FORMAT = "hf_missing-trainer-resume"  # the shard index save_pretrained writes for Trainer's resume
DOWNLOAD_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")  # what addresses a repo
MAX_ADAPTER_BYTES = 2 * 2**30  # what the head, the method's tensors and any text-position extension may allocate
MAX_JSON_BYTES = 4 * 2**20  # adapter_config.json / config.json above this are refused unread
MAX_OPTION_VALUE = 65_536  # no method option (prompt length, depth, widths) is anywhere near this in any paper
MAX_LABELS = 100_000
MAX_HEAD_RATIO = 64
MAX_MODALITIES = 16
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
SETTING_KEYS = ("num_labels", "id2label", "label2id", "problem_type", "missing_policy", "modalities",
                "max_text_len", "head_hidden_ratio")
TASKS = ("single_label_classification", "multi_label_classification")
_PLANNING: ContextVar[bool] = ContextVar("hf_missing_planning", default=False)


class AdapterLoadError(ValueError):
    """An adapter that is unsafe to load or does not fit the backbone; the message says how to fix it."""


# ---- files ----------------------------------------------------------------------------------------------------
def read_json_file(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from ``path`` (at most :data:`MAX_JSON_BYTES`), or an :class:`AdapterLoadError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise AdapterLoadError(f"{path} does not exist; an hf_missing adapter folder holds {ADAPTER_CONFIG_NAME}, "
                               f"{ADAPTER_WEIGHTS_NAME} and {CONFIG_NAME} as save_pretrained writes them.")
    if path.stat().st_size > MAX_JSON_BYTES:
        raise AdapterLoadError(f"{path} is {path.stat().st_size} bytes, more than the {MAX_JSON_BYTES} a config "
                               "may have; the file is corrupt or hostile. Re-save the adapter with save_pretrained.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterLoadError(f"{path} is not valid JSON ({err}); re-save the adapter with save_pretrained.") from err
    if not isinstance(data, dict):
        raise AdapterLoadError(f"{path} holds a JSON {type(data).__name__}, not an object; re-save the adapter with "
                               "save_pretrained.")
    return data


def is_resume_index(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the shard index hf_missing writes beside an adapter for Trainer's resume (the folder is
    then an adapter folder, not a full checkpoint)."""
    try:
        return read_json_file(path).get("metadata", {}).get("format") == RESUME_INDEX_FORMAT
    except AdapterLoadError:
        return False


# ---- head settings --------------------------------------------------------------------------------------------
def check_settings(settings: Any, source: str) -> dict[str, Any]:
    """The allow-listed, type- and range-checked ``model_settings`` of an adapter config (what
    ``MissingModalityForClassification.model_settings`` writes); anything else is refused."""
    where = f"{source}: model_settings"
    if not isinstance(settings, dict):
        raise AdapterLoadError(f"{where} must be an object, got {settings!r:.200}; re-save the adapter with "
                               "save_pretrained.")
    unknown = sorted(set(settings) - set(SETTING_KEYS))
    if unknown:
        raise AdapterLoadError(f"{where} holds key(s) {unknown} that hf_missing never writes (allowed: "
                               f"{list(SETTING_KEYS)}); they would reach model loading, so the adapter is refused. "
                               "Remove them or re-save the adapter with save_pretrained.")
    num_labels = settings.get("num_labels")
    _require(is_int(num_labels) and 1 <= num_labels <= MAX_LABELS, where, "num_labels",
             f"an integer in [1, {MAX_LABELS}]", num_labels)
    _check_labels(settings, num_labels, where)
    _require(settings.get("problem_type") in (None, *TASKS), where, "problem_type", f"None or one of {list(TASKS)}",
             settings.get("problem_type"))
    _require(settings.get("missing_policy", "dummy") in POLICIES, where, "missing_policy", f"one of {list(POLICIES)}",
             settings.get("missing_policy"))
    modalities = settings.get("modalities")
    _require(isinstance(modalities, list) and 1 <= len(modalities) <= MAX_MODALITIES
             and all(isinstance(m, str) and m for m in modalities) and len(set(modalities)) == len(modalities),
             where, "modalities", "a list of distinct modality names", modalities)
    max_text_len = settings.get("max_text_len")
    _require(max_text_len is None or (is_int(max_text_len) and 1 <= max_text_len <= MAX_OPTION_VALUE), where,
             "max_text_len", f"None or an integer in [1, {MAX_OPTION_VALUE}]", max_text_len)
    ratio = settings.get("head_hidden_ratio", 2)
    _require(is_int(ratio) and 1 <= ratio <= MAX_HEAD_RATIO, where, "head_hidden_ratio",
             f"an integer in [1, {MAX_HEAD_RATIO}]", ratio)
    return {k: settings[k] for k in SETTING_KEYS if k in settings}


def _check_labels(settings: dict[str, Any], num_labels: int, where: str) -> None:
    id2label, label2id = settings.get("id2label"), settings.get("label2id")
    keys = [str(i) for i in range(num_labels)]
    _require(id2label is None or (isinstance(id2label, dict) and sorted(id2label, key=_as_index) == keys
                                  and all(isinstance(v, str) for v in id2label.values())),
             where, "id2label", f"an object mapping '0'..'{num_labels - 1}' to label names", id2label)
    _require(label2id is None or (isinstance(label2id, dict) and all(is_int(v) and 0 <= v < num_labels
                                                                      for v in label2id.values())),
             where, "label2id", f"an object mapping label names to integers in [0, {num_labels - 1}]", label2id)


def _as_index(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (-1, key)


def _require(ok: bool, where: str, key: str, expected: str, value: Any) -> None:
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 200 else f"{shown[:200]}..."
        raise AdapterLoadError(f"{where}.{key} must be {expected}, got {shown}; re-save the adapter from a model "
                               "with valid settings (save_pretrained writes them).")


def is_int(value: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_option_sizes(method: str, options: dict[str, Any], source: str) -> None:
    """Refuse integer options beyond ``MAX_OPTION_VALUE`` before anything is built."""
    too_big = {k: v for k, v in options.items() if is_int(v) and abs(v) > MAX_OPTION_VALUE}
    if too_big:
        raise AdapterLoadError(f"{source}: {method} option(s) {too_big} exceed {MAX_OPTION_VALUE}; the adapter "
                               "config is corrupt or hostile. Re-save the adapter with sane options.")


# ---- memory budget --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterPlan:
    """What injecting a method config into a wrapper config creates, measured by a dry run on the meta device.

    Attributes:
        tensors: checkpoint key (as ``adapter_model.safetensors`` stores it) -> (shape, dtype) of every tensor
            the adapter saves: the method's own, the head and the pooler.
        nbytes: bytes the head, the method and any backbone change (ViLT's extended text positions) allocate.
    """

    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]
    nbytes: int


def planning() -> bool:
    """True inside :func:`plan_adapter`'s dry run (where the budget check must not recurse)."""
    return _PLANNING.get()


@contextlib.contextmanager
def _dry_run() -> Iterator[None]:
    token = _PLANNING.set(True)
    try:
        with torch.device("meta"):
            yield
    finally:
        _PLANNING.reset(token)


def plan_adapter(model_cls: type, wrapper_config: PretrainedConfig, method_config: Any,
                 source: str | None = None) -> AdapterPlan:
    """Build ``model_cls(wrapper_config)`` and inject ``method_config`` on the meta device (nothing is
    allocated), and measure what that creates. With ``source`` (the file the config came from), a config the
    method refuses (e.g. a prompt longer than the backbone's context) is an :class:`AdapterLoadError` naming it."""
    try:
        with _dry_run():
            backbone_bytes = _nbytes(AutoModel.from_config(wrapper_config.backbone_config))
            model = model_cls(copy.deepcopy(wrapper_config))
            model.add_adapter(copy.deepcopy(method_config))
            state = model.get_adapter_state_dict()
    except ValueError as err:
        if source is None or isinstance(err, AdapterLoadError):
            raise
        raise AdapterLoadError(f"{source}: {err}") from err
    tensors = {f"{CHECKPOINT_PREFIX}{k}": (tuple(v.shape), v.dtype) for k, v in state.items()}
    return AdapterPlan(tensors=tensors, nbytes=max(0, _nbytes(model) - backbone_bytes))


def _nbytes(model: torch.nn.Module) -> int:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def check_budget(plan: AdapterPlan, limit: int | None, source: str) -> None:
    """Refuse an adapter whose dry run allocates more than ``limit`` bytes (default :data:`MAX_ADAPTER_BYTES`)."""
    limit = MAX_ADAPTER_BYTES if limit is None else limit
    if plan.nbytes > limit:
        raise AdapterLoadError(
            f"{source}: this adapter would allocate {plan.nbytes:,} bytes ({plan.nbytes / 2**30:.2f} GiB) for its "
            f"head and method tensors, above the budget of {limit:,} bytes (hf_missing.loading.MAX_ADAPTER_BYTES). "
            "An adapter config this large is corrupt or hostile; if you trust it, raise the limit in code with "
            "max_adapter_bytes=<bytes> (from_pretrained, load_adapter or add_adapter)."
        )


# ---- weights --------------------------------------------------------------------------------------------------
def read_adapter_weights(path: str | os.PathLike, plan: AdapterPlan) -> dict[str, torch.Tensor]:
    """The tensors of ``adapter_model.safetensors``, after checking from its header alone that it holds exactly
    the tensors of ``plan`` with their shapes and float dtypes, and then that every value is finite."""
    path = Path(path)
    header = _header(path)
    unexpected = sorted(set(header) - set(plan.tensors))
    if unexpected:
        raise AdapterLoadError(
            f"{path} holds tensor(s) {_short(unexpected)} that this adapter does not own; an adapter may carry only "
            "its method's tensors, the head and the pooler (a frozen-backbone key would overwrite the backbone). "
            "Re-save the adapter with save_pretrained."
        )
    missing = sorted(set(plan.tensors) - set(header))
    if missing:
        raise AdapterLoadError(f"{path} lacks tensor(s) {_short(missing)} of this adapter (they would stay randomly "
                               "initialised); the file is truncated or from another adapter config. Re-save it.")
    for key, (shape, dtype) in header.items():
        expected = plan.tensors[key][0]
        if tuple(shape) != expected:
            raise AdapterLoadError(f"{path}: tensor {key} has shape {list(shape)}, but the adapter config makes it "
                                   f"{list(expected)}; the weights and adapter_config.json do not belong together.")
        if dtype not in FLOAT_DTYPES:
            raise AdapterLoadError(f"{path}: tensor {key} is {dtype}; adapter tensors are floating point "
                                   f"({', '.join(FLOAT_DTYPES)}). Re-save the adapter with save_pretrained.")
    tensors = load_file(str(path))
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise AdapterLoadError(f"{path}: tensor {key} holds NaN or infinite values; the adapter diverged in "
                                   "training or the file is corrupt. Retrain or re-save it.")
    return tensors


def _header(path: Path) -> dict[str, tuple[list[int], str]]:
    if not path.is_file():
        raise AdapterLoadError(f"{path} does not exist; an hf_missing adapter stores its weights there (pickled "
                               "adapter_model.bin files are never read). Re-save the adapter with save_pretrained.")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterLoadError(f"{path} is not a valid safetensors file ({err}); re-save the adapter with "
                               "save_pretrained.") from err


def _short(keys: list[str]) -> str:
    return str(keys if len(keys) <= 5 else [*keys[:5], f"... {len(keys) - 5} more"])
