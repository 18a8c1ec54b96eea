"""Loading adapters that others share, safely: finding an adapter (a folder or a Hub repo) and the checks it
passes before it reaches a model. This layer sits below ``modeling`` (whose loaders call it) and ``hub``
(push and model cards).

Threat model (the README's "Loading shared adapters"): an adapter folder or Hub repo is untrusted data. Loading
reads only ``adapter_config.json``, ``config.json``, ``adapter_model.safetensors``, ``missing_settings.json``
and the safetensors files a method declares (:attr:`MethodHooks.files`); nothing else is downloaded or opened,
no pickle or faiss file is ever deserialised and no remote code runs. Nothing from those files reaches a
``from_pretrained`` keyword: ``model_settings`` is an allow-list of typed, range-checked head settings
(:func:`check_settings`). Before anything is allocated, a dry run on the meta device measures what the adapter
config asks for (:func:`plan_adapter`) against :data:`MAX_ADAPTER_BYTES`, a limit the user may raise in code
(``max_adapter_bytes=``) but never the file. The weights file may hold exactly the tensors that dry run creates
(the method's own, the head and the pooler), each of that shape, of a float dtype and finite
(:func:`read_adapter_weights`). Every refusal is an :class:`AdapterLoadError` naming the file.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils.peft_utils import find_adapter_config_file

from .backbones import backbone_interface_for
from .context import POLICIES
from .methods import METHODS, MissingMethodConfig, get_method_config, list_methods
from .methods.options import is_int, is_signature

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "config.json"
MISSING_SETTINGS_NAME = "missing_settings.json"  # the training split's missing-modality settings (hf-missing train)
CHECKPOINT_PREFIX = "base_model.model."  # transformers' PEFT-format keys of a saved adapter
RESUME_INDEX_FORMAT = "hf_missing-trainer-resume"  # the shard index save_pretrained writes for Trainer's resume
DOWNLOAD_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")  # what addresses a repo
MAX_ADAPTER_BYTES = 2 * 2**30  # what the head, the method's tensors and any text-position extension may allocate
MAX_JSON_BYTES = 4 * 2**20  # adapter_config.json / config.json above this are refused unread
MAX_TEXT_LEN = 65_536  # model_settings.max_text_len (ViLT interpolates its 40 text positions to it)
MAX_LABELS = 100_000
MAX_HEAD_RATIO = 64
MAX_MODALITIES = 16
MAX_LAYERS = 512  # encoder layers of one stream (CLIP ViT-bigG has 48)
FULL_CHECKPOINT_NAMES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
NEVER_READ = ("training_args.bin",)  # the Trainer's pickled arguments: hf_missing never downloads or reads them
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies", "subfolder")
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
BACKBONE_SLACK = 2.5  # a backbone's tensors may outgrow its weights file (float16 files load as float32, buffers)
BACKBONE_MARGIN = 256 * 2**20
SETTING_KEYS = ("num_labels", "id2label", "label2id", "problem_type", "missing_policy", "modalities",
                "max_text_len", "head_hidden_ratio", "regression_loss")
TASKS = ("single_label_classification", "multi_label_classification", "regression")
REGRESSION_LOSSES = ("mse", "l1")  # l1: MMSA's and MulT's regression criterion (nn.L1Loss)
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
    except (ValueError, RecursionError) as err:  # bad UTF-8 or JSON, over-long integers, nesting beyond the stack
        raise AdapterLoadError(f"{path} is not valid JSON ({err}); re-save the adapter with save_pretrained.") from err
    if not isinstance(data, dict):
        raise AdapterLoadError(f"{path} holds a JSON {type(data).__name__}, not an object; re-save the adapter with "
                               "save_pretrained.")
    return data


def is_resume_index(path: str | os.PathLike) -> bool:
    """Whether ``path`` is the shard index hf_missing writes beside an adapter for Trainer's resume (the folder is
    then an adapter folder, not a full checkpoint)."""
    try:
        metadata = read_json_file(path).get("metadata")
        return isinstance(metadata, dict) and metadata.get("format") == RESUME_INDEX_FORMAT
    except AdapterLoadError:
        return False


def method_options(adapter_config: dict[str, Any], method: str) -> dict[str, Any]:
    return {k: adapter_config[k] for k in METHODS[method].config_cls.options_help() if k in adapter_config}


# ---- pull ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AdapterSource:
    """A local adapter folder, and whether it came from the Hub (then the backbone it names must be a Hub repo id:
    a downloaded adapter never points the loader at a file of this machine)."""

    folder: str
    remote: bool


def adapter_files() -> list[str]:
    """The only files of an adapter that hf_missing downloads or reads: its config, its weights, ``config.json``,
    the files the registered methods save beside them (REDEEM's memory bank) and ``missing_settings.json``."""
    return [*saved_files(), MISSING_SETTINGS_NAME]


def saved_files() -> list[str]:
    """The adapter files ``save_pretrained`` writes (a new save replaces every one of them)."""
    method_files = [name for spec in METHODS.values() for name in spec.hooks.files]
    return list(dict.fromkeys([ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME, *method_files]))


def resolve_adapter_dir(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> str | None:
    """The local folder of an hf_missing adapter at ``name_or_path`` (a folder or a Hub repo id), downloading
    only :func:`adapter_files` from the Hub; None when it is not an adapter (e.g. a backbone or a full checkpoint
    without an adapter config)."""
    source = resolve_adapter(name_or_path, **hub_kwargs)
    return None if source is None else source.folder


def resolve_adapter(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> AdapterSource | None:
    """Like :func:`resolve_adapter_dir`, also saying whether the adapter came from the Hub."""
    path = str(name_or_path)
    _refuse_subfolder(path, hub_kwargs)
    hub_kwargs = {k: v for k, v in hub_kwargs.items() if k in DOWNLOAD_KWARGS}
    if os.path.isdir(path):
        folder = _local_adapter_dir(path)
        return None if folder is None else AdapterSource(folder, _in_hub_cache(folder, hub_kwargs))
    if not is_repo_id(path) or find_adapter_config_file(path, **hub_kwargs) is None:
        return None
    files = _repo_files(path, hub_kwargs)
    _check_adapter_files(files, [name for name in FULL_CHECKPOINT_NAMES if name in files], path)
    folder = snapshot_download(path, allow_patterns=adapter_files(), **hub_kwargs)
    return AdapterSource(folder, remote=True)


def _refuse_subfolder(path: str, hub_kwargs: dict[str, Any]) -> None:
    """hf_missing loads adapters from a folder or the root of a Hub repo: an adapter addressed with ``subfolder=``
    is refused (peft and transformers would read the subfolder while a check looked at the root)."""
    subfolder = hub_kwargs.get("subfolder")
    if not subfolder:
        return
    kwargs = {k: v for k, v in hub_kwargs.items() if k in (*DOWNLOAD_KWARGS, "subfolder")}
    found = (os.path.isfile(os.path.join(path, str(subfolder), ADAPTER_CONFIG_NAME)) if os.path.isdir(path)
             else is_repo_id(path) and find_adapter_config_file(path, **kwargs) is not None)
    if found or os.path.isfile(os.path.join(path, ADAPTER_CONFIG_NAME)):
        raise AdapterLoadError(f"{path}: hf_missing adapters load from a folder or the root of a Hub repo, not with "
                               f"subfolder={subfolder!r}; pass the adapter's own folder (download it first) instead.")


def full_checkpoint_files(folder: str | os.PathLike) -> list[str]:
    """The full-checkpoint files in ``folder`` (``model.safetensors`` or a shard index), not counting the shard
    index hf_missing writes beside an adapter for Trainer's resume."""
    return [name for name in FULL_CHECKPOINT_NAMES if (Path(folder) / name).is_file()
            and not (name == FULL_CHECKPOINT_NAMES[1] and is_resume_index(Path(folder) / name))]


def _local_adapter_dir(path: str) -> str | None:
    files = os.listdir(path)
    if ADAPTER_CONFIG_NAME not in files:
        return None
    _check_adapter_files(files, full_checkpoint_files(path), path)
    _check_links(path)
    return path


def _check_links(folder: str) -> None:
    """Refuse adapter files that are links leading out of the folder (a crafted folder could make the loader read
    any file of this machine); the Hub cache's own links into its blob store are fine."""
    if _in_hub_cache(folder, {}):
        return
    root = Path(folder).resolve()
    for name in adapter_files():
        path = Path(folder) / name
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise AdapterLoadError(f"{path} is a link to {path.resolve()}, outside the adapter folder; an adapter's "
                                   "files are read only from its own folder. Replace the link by the file.")


def _check_adapter_files(files: list[str], full: list[str], source: str) -> None:
    """Refuse a folder that mixes a full checkpoint (``full``: its files) with an hf_missing adapter (which would
    win is ambiguous) and an adapter whose weights exist only as a pickle."""
    if full:
        raise AdapterLoadError(
            f"{source} holds both {ADAPTER_CONFIG_NAME} and a full checkpoint {full}; it is unclear which to load. "
            "Keep adapters and full checkpoints in separate folders (save_pretrained refuses to mix them)."
        )
    pickled = sorted(f for f in files if f.lower().endswith(PICKLE_SUFFIXES) and os.path.basename(f) not in NEVER_READ)
    if ADAPTER_WEIGHTS_NAME not in files and pickled:
        check_no_pickles(pickled, source)


def _in_hub_cache(folder: str, hub_kwargs: dict[str, Any]) -> bool:
    cache = Path(hub_kwargs.get("cache_dir") or constants.HF_HUB_CACHE).resolve()
    return Path(folder).resolve().is_relative_to(cache)


def _repo_files(repo_id: str, hub_kwargs: dict[str, Any]) -> list[str]:
    if hub_kwargs.get("local_files_only") or constants.HF_HUB_OFFLINE:
        return os.listdir(snapshot_download(repo_id, **{**hub_kwargs, "local_files_only": True}))
    return HfApi(token=hub_kwargs.get("token")).list_repo_files(repo_id, revision=hub_kwargs.get("revision"))


def check_no_pickles(files: Iterable[str], source: str) -> None:
    """Refuse pickled files (arbitrary code on load) among an adapter's files."""
    pickled = sorted(f for f in files if f.lower().endswith(PICKLE_SUFFIXES) and os.path.basename(f) not in NEVER_READ)
    if pickled:
        raise AdapterLoadError(
            f"{source} holds pickled file(s) {pickled}; hf_missing loads safetensors only, because unpickling can "
            "run arbitrary code. Re-save the adapter with save_pretrained (it writes adapter_model.safetensors) "
            "or convert the tensors with safetensors.torch.save_file, and remove the pickles."
        )


def backbone_of(folder: str | os.PathLike, adapter_config: dict[str, Any], remote: bool = False) -> str:
    """Where the adapter in ``folder`` takes its backbone from: ``config.json``'s ``backbone_name_or_path``,
    else ``adapter_config.json``'s ``base_model_name_or_path``. An adapter from the Hub (``remote``) may only
    name a Hub repo id, never a path on this machine."""
    config_file = Path(folder) / CONFIG_NAME
    config = read_json_file(config_file) if config_file.is_file() else {}
    backbone = config.get("backbone_name_or_path") or adapter_config.get("base_model_name_or_path")
    if not backbone or not isinstance(backbone, str):
        raise AdapterLoadError(f"The adapter in {folder} does not say which backbone it adapts ({CONFIG_NAME}'s "
                               "backbone_name_or_path); pass backbone_name_or_path=<hub id or path of its backbone>.")
    if remote and not _is_remote_name(backbone):
        raise AdapterLoadError(
            f"{config_file} of an adapter downloaded from the Hub names the backbone {backbone!r}, which is not a Hub "
            "repo id; a downloaded adapter may not point the loader at files of this machine. If you trust it, pass "
            "backbone_name_or_path=<the backbone> in your code."
        )
    return backbone


def _is_remote_name(name: str) -> bool:
    if name.startswith(("/", ".", "~")) or ".." in name or "\\" in name:
        return False
    return is_repo_id(name)


def _backbone_config(backbone: str, source: str) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(backbone)
    except (OSError, ValueError, RecursionError) as err:
        raise AdapterLoadError(f"The backbone {backbone!r} named by {source} has no readable config.json ({err}); "
                               "pass backbone_name_or_path=<the checkpoint the adapter was trained on>.") from err


def _check_depth(config: PretrainedConfig, source: str) -> None:
    """Layer counts beyond :data:`MAX_LAYERS` are refused before any module (even on the meta device) is built."""
    depths = [v for k, v in _walk(config.to_dict()) if k in ("num_hidden_layers", "num_layers") and is_int(v)]
    if any(d > MAX_LAYERS for d in depths):
        raise AdapterLoadError(f"The backbone named by {source} declares {max(depths)} layers, more than the "
                               f"{MAX_LAYERS} any supported backbone has; its config.json is corrupt or hostile.")


def _walk(data: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield key, value
            yield from _walk(value)


def load_backbone_error(backbone: str, source: str, err: Exception) -> AdapterLoadError:
    """The error for a backbone that cannot be loaded from safetensors."""
    return AdapterLoadError(
        f"The backbone {backbone!r} named by the adapter in {source} could not be loaded from safetensors ({err}). "
        "hf_missing loads a backbone named by an adapter from safetensors weights only, because pickled weights "
        "(pytorch_model.bin) can run code. Convert it where you trust it: AutoModel.from_pretrained(path)"
        ".save_pretrained(new_path) writes model.safetensors; then pass backbone_name_or_path=new_path."
    )


def _check_backbone_size(backbone: str, meta_model: torch.nn.Module, source: str) -> None:
    """Refuse a backbone named by an adapter whose ``config.json`` asks for far more memory than its safetensors
    weights hold (the missing tensors would be allocated and initialised: a 1 KB config could claim terabytes).
    ``meta_model`` is the backbone built from that config on the meta device."""
    wanted = _nbytes(meta_model)
    held = _weights_bytes(backbone)
    if held is not None and wanted > BACKBONE_SLACK * held + BACKBONE_MARGIN:
        raise AdapterLoadError(
            f"The backbone {backbone!r} named by {source} declares {wanted:,} bytes of tensors in its config.json "
            f"but its safetensors weights hold {held:,}; its config is corrupt or hostile (loading would allocate "
            "and initialise the difference). Load the adapter onto a backbone you trust with backbone_name_or_path=."
        )


def _weights_bytes(backbone: str) -> int | None:
    """Bytes of the safetensors files transformers will load for ``backbone`` (``model.safetensors``, or the shards
    its index names: padding files beside them do not count); None when they cannot be found (transformers then
    fails to load the backbone itself)."""
    if not os.path.isdir(backbone) and constants.HF_HUB_OFFLINE:
        try:  # offline, transformers loads the cached snapshot: measure that
            backbone = snapshot_download(backbone, local_files_only=True)
        except OSError:
            return None
    if os.path.isdir(backbone):
        sizes = {p.name: p.stat().st_size for p in Path(backbone).glob("*.safetensors")}
        index = Path(backbone) / FULL_CHECKPOINT_NAMES[1]
    else:
        try:
            sizes = {e.path: getattr(e, "size", 0) or 0 for e in HfApi().list_repo_tree(backbone)}
            index = (Path(hf_hub_download(backbone, FULL_CHECKPOINT_NAMES[1]))
                     if FULL_CHECKPOINT_NAMES[1] in sizes else None)
        except OSError:  # unreachable: huggingface_hub's HTTP errors are OSErrors; transformers will fail too
            return None
    if FULL_CHECKPOINT_NAMES[0] in sizes:
        return sizes[FULL_CHECKPOINT_NAMES[0]]
    if index is None or not index.is_file():
        return None
    weight_map = read_json_file(index).get("weight_map")
    shards = {v for v in weight_map.values() if isinstance(v, str)} if isinstance(weight_map, dict) else set()
    return sum(sizes.get(shard, 0) for shard in shards)


# ---- validation ---------------------------------------------------------------------------------
def validate_adapter_config(adapter_config: dict[str, Any], source: str) -> MissingMethodConfig:
    """Check an ``adapter_config.json`` without any model: a known hf_missing method, valid options within
    sane sizes, allow-listed head settings and a well-formed backbone signature; returns the method config
    it describes, built from the method options alone (nothing else of the file reaches peft)."""
    method = method_name(adapter_config, source)
    options = method_options(adapter_config, method)
    try:
        config = get_method_config(method, **options)
    except (TypeError, ValueError) as err:
        raise AdapterLoadError(f"{source}: invalid {method} options: {err}") from err
    check_settings(adapter_config.get("model_settings"), source)
    _check_signature_format(adapter_config.get("backbone_signature"), source)
    return config


def _check_signature_format(signature: Any, source: str) -> None:
    if signature is not None and not is_signature(signature):
        raise AdapterLoadError(f"{source}: backbone_signature must be {{'model_type': str, 'streams': {{name: [hidden "
                               f"size, layers]}}}}, got {signature!r:.200}; re-save the adapter with save_pretrained.")


def check_pooler_modules(adapter_config: dict[str, Any], pooler_modules: Iterable[str], source: str) -> None:
    """The saved ``modules_to_save`` may name only the head and ``pooler_modules`` of the backbone interface (what
    hf_missing adds itself): anything else would load trained copies of frozen backbone modules from the file."""
    modules = adapter_config.get("modules_to_save") or []
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise AdapterLoadError(f"{source}: modules_to_save must be a list of module names, got {modules!r:.200}.")
    allowed = {"head", *(f"backbone.{m}" for m in pooler_modules)}
    extra = sorted(set(modules) - allowed)
    if extra:
        raise AdapterLoadError(f"{source}: modules_to_save names {extra}, which are neither the head nor this "
                               f"backbone's pooler ({sorted(allowed)}); loading them would replace frozen backbone "
                               "modules. Re-save the adapter with save_pretrained.")


def validate_backbone(adapter_config: dict[str, Any], backbone: str | PretrainedConfig,
                      source: str) -> PretrainedConfig:
    """Check the adapter against the backbone's config (built on the meta device: no weight is loaded):
    backbone type, each stream's hidden size and layer count, the modality set and the saved modules, and for a
    backbone named by path or repo id the size its config declares against its weights; returns the backbone's
    config."""
    config = backbone if isinstance(backbone, PretrainedConfig) else _backbone_config(backbone, source)
    config = getattr(config, "backbone_config", None) or config  # a saved wrapper names its backbone's config
    _check_depth(config, source)
    with _dry_run():
        meta_model = AutoModel.from_config(config)
    if isinstance(backbone, str):
        _check_backbone_size(backbone, meta_model, source)
    interface = backbone_interface_for(meta_model)
    method = method_name(adapter_config, source)
    saved, current = adapter_config.get("backbone_signature"), interface.signature()
    if saved is not None and _streams(saved) != _streams(current):
        raise AdapterLoadError(
            f"{source}: this {method} adapter was trained on a {saved['model_type']} backbone with streams "
            f"{_streams(saved)[1]} ([hidden size, layers]), but {_name(backbone)} is a {current['model_type']} with "
            f"{_streams(current)[1]}; load it onto the backbone it was trained with (backbone_name_or_path=...)."
        )
    modalities = tuple(adapter_config["model_settings"]["modalities"])
    if set(modalities) != set(interface.modalities):
        raise AdapterLoadError(f"{source}: the adapter handles modalities {list(modalities)}, but {_name(backbone)} "
                               f"has {list(interface.modalities)}; load it onto a backbone with those modalities.")
    check_pooler_modules(adapter_config, interface.pooler_modules, source)
    return config


def _streams(signature: dict[str, Any]) -> tuple[str, dict[str, list[int]]]:
    return signature["model_type"], {k: list(v) for k, v in signature["streams"].items()}


def method_name(adapter_config: dict[str, Any], source: str) -> str:
    peft_type = str(adapter_config.get("peft_type") or "")
    if not peft_type.startswith("HFM_") or not adapter_config.get("model_settings"):
        raise AdapterLoadError(f"{source} holds a {peft_type or 'non-PEFT'} adapter, not an hf_missing adapter "
                               "(peft_type HFM_<method> with model_settings); load it with peft directly.")
    method = peft_type.removeprefix("HFM_").lower()
    if method not in METHODS:
        raise AdapterLoadError(f"{source} uses method {method!r}, which this hf_missing does not know (known: "
                               f"{list_methods()}); upgrade hf_missing or import the package that registers it.")
    return method


# ---- helpers ------------------------------------------------------------------------------------
def is_repo_id(name: str) -> bool:
    if os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _name(backbone: str | PretrainedConfig) -> str:
    return backbone if isinstance(backbone, str) else "this model's backbone"


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
    _require(max_text_len is None or (is_int(max_text_len) and 1 <= max_text_len <= MAX_TEXT_LEN), where,
             "max_text_len", f"None or an integer in [1, {MAX_TEXT_LEN}]", max_text_len)
    _require(settings.get("regression_loss", "mse") in REGRESSION_LOSSES, where, "regression_loss",
             f"one of {list(REGRESSION_LOSSES)}", settings.get("regression_loss"))
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
    return (int(key), key) if key.isascii() and key.isdecimal() and len(key) <= 9 else (-1, key)


def _require(ok: bool, where: str, key: str, expected: str, value: Any) -> None:
    if not ok:
        shown = repr(value)
        shown = shown if len(shown) <= 200 else f"{shown[:200]}..."
        raise AdapterLoadError(f"{where}.{key} must be {expected}, got {shown}; re-save the adapter from a model "
                               "with valid settings (save_pretrained writes them).")


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
    # copied: safetensors' tensors view its buffer unaligned, and matrix kernels round differently on unaligned
    # memory, so logits would differ in the last bits from the model that was saved
    tensors = {key: tensor.to(plan.tensors[key][1], copy=True) for key, tensor in load_file(str(path)).items()}
    for key, tensor in tensors.items():  # checked in the model's dtype: a float64 value can overflow float32
        if not torch.isfinite(tensor).all():
            raise AdapterLoadError(f"{path}: tensor {key} holds NaN or infinite values (in the model's "
                                   f"{plan.tensors[key][1]}); the adapter diverged in training or the file is corrupt. "
                                   "Retrain or re-save it.")
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
