"""Push adapters to the Hugging Face Hub with a model card, and pull them back safely.

Pushing (:func:`push_adapter`, also behind ``MissingModalityForClassification.push_to_hub``) uploads the
adapter folder that ``save_pretrained`` writes (``adapter_config.json``, ``adapter_model.safetensors``,
``config.json`` and any files a method saves beside them), a robustness plot when given, and a
``README.md`` rendered from ``model_cards/adapter_card.md``: base model, method and paper, the missing-modality
protocol, results per missing pattern (as model-index ``EvalResult`` rows) and a loading snippet.

In a pushed repo ``adapter_config.json``'s ``base_model_name_or_path`` names the repo itself: the PEFT base
model of an hf_missing adapter is the wrapper (backbone + head) that the repo's ``config.json`` describes,
and ``transformers.AutoModel.from_pretrained(<adapter repo>)`` switches to that name before loading. The
backbone weights come from ``config.json``'s ``backbone_name_or_path``.

Pulling (:func:`resolve_adapter_dir`, called by ``from_pretrained`` and ``load_adapter``) downloads only the
adapter's own files (:func:`adapter_files`: its config, its safetensors weights, ``config.json`` and the
safetensors files its method declares); pickles, faiss indexes, images and docs are never downloaded or read,
no remote code runs, and the adapter config is validated (:func:`validate_adapter_config`,
:func:`validate_backbone`) before anything is allocated or any weight is read (threat model:
:mod:`hf_missing.loading`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, DatasetDict
from huggingface_hub import (
    CommitInfo,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
    constants,
    snapshot_download,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, PretrainedConfig
from transformers.utils.peft_utils import find_adapter_config_file

from .backbones import backbone_interface_for
from .data import missing_settings
from .loading import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    CONFIG_NAME,
    DOWNLOAD_KWARGS,
    MISSING_SETTINGS_NAME,
    AdapterLoadError,
    check_option_sizes,
    check_settings,
    is_int,
    is_resume_index,
    read_json_file,
)
from .methods import METHODS, MissingMethodConfig, get_method_config, list_methods

FULL_CHECKPOINT_NAMES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
NEVER_READ = ("training_args.bin",)  # the Trainer's pickled arguments: hf_missing never downloads or reads them
CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "model_cards" / "adapter_card.md"
PLOT_STEM = "robustness"
PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")
# Written beside an adapter only for Trainer's resume (see MissingModalityForClassification.save_pretrained).
TRAINER_ONLY_FILES = ["trainer_resume.safetensors", "model.safetensors.index.json", "training_args.bin"]
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies", "subfolder")
SKIPPED_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch", "count")
OVERALL = "all"
TASK_TYPE = "multimodal-classification"


@dataclass(frozen=True)
class MethodPaper:
    """Where a method comes from: a one-line reference (``paper``) and its BibTeX (``citation``)."""

    paper: str
    citation: str


METHOD_PAPERS: dict[str, MethodPaper] = {
    "baseline": MethodPaper(
        paper="The frozen-backbone baseline (pooler and head trained) of the missing-modality papers, as in Lee et "
              "al., Multimodal Prompting with Missing Modalities for Visual Recognition, CVPR 2023.",
        citation="@inproceedings{lee2023multimodal,\n  title={Multimodal Prompting with Missing Modalities for Visual "
                 "Recognition},\n  author={Lee, Yi-Lun and Tsai, Yi-Hsuan and Chiu, Wei-Chen and Lee, Chen-Yu},\n"
                 "  booktitle={CVPR},\n  pages={14943--14952},\n  year={2023}\n}",
    ),
    "map": MethodPaper(
        paper="Lee, Tsai, Chiu and Lee. Multimodal Prompting with Missing Modalities for Visual Recognition. "
              "CVPR 2023. https://github.com/YiLunLee/missing_aware_prompts",
        citation="@inproceedings{lee2023multimodal,\n  title={Multimodal Prompting with Missing Modalities for Visual "
                 "Recognition},\n  author={Lee, Yi-Lun and Tsai, Yi-Hsuan and Chiu, Wei-Chen and Lee, Chen-Yu},\n"
                 "  booktitle={CVPR},\n  pages={14943--14952},\n  year={2023}\n}",
    ),
    "rep": MethodPaper(
        paper="Zhu, Liu, Ba, Xue and Zhang. Buffer Replay Enhances the Robustness of Multimodal Learning under "
              "Missing-Modality (REP: REplay Prompting).",
        citation="@misc{zhu2025rep,\n  title={Buffer Replay Enhances the Robustness of Multimodal Learning under "
                 "Missing-Modality},\n  author={Zhu, Hongye and Liu, Xuan and Ba, Yanwen and Xue, Jingye and Zhang, "
                 "Shigeng}\n}",
    ),
    "memprompt": MethodPaper(
        paper="Zhao, Xi, Fu and Zhao. Enhancing Multimodal Model Robustness Under Missing Modalities via "
              "Memory-Driven Prompt Learning. IJCAI 2025. https://github.com/zhao-yh20/MemPrompt",
        citation="@inproceedings{zhao2025memprompt,\n  title={Enhancing Multimodal Model Robustness Under Missing "
                 "Modalities via Memory-Driven Prompt Learning},\n  author={Zhao, Yihan and Xi, Wei and Fu, Xiao and "
                 "Zhao, Jizhong},\n  booktitle={IJCAI},\n  year={2025}\n}",
    ),
    "cmpt": MethodPaper(
        paper="Reza, Patil, Solh and Asif. Robust Multimodal Learning via Cross-Modal Proxy Tokens. TMLR, "
              "arXiv:2501.17823.",
        citation="@article{reza2025cmpt,\n  title={Robust Multimodal Learning via Cross-Modal Proxy Tokens},\n"
                 "  author={Reza, Md Kaykobad and Patil, Ameya and Solh, Mashhour and Asif, M. Salman},\n"
                 "  journal={Transactions on Machine Learning Research},\n  eprint={2501.17823},\n"
                 "  archivePrefix={arXiv},\n  year={2025}\n}",
    ),
    "redeem": MethodPaper(
        paper="Lang, Hong, Cheng, Zhong, Wang and Zhou. REDEEMing Modality Information Loss: Retrieval-Guided "
              "Conditional Generation for Severely Modality Missing Learning. KDD 2025. "
              "https://doi.org/10.1145/3711896.3737101",
        citation="@inproceedings{lang2025redeem,\n  title={REDEEMing Modality Information Loss: Retrieval-Guided "
                 "Conditional Generation for Severely Modality Missing Learning},\n  author={Lang, Jian and Hong, "
                 "Rongpei and Cheng, Zhangtao and Zhong, Ting and Wang, Yong and Zhou, Fan},\n  booktitle={KDD},\n"
                 "  doi={10.1145/3711896.3737101},\n  year={2025}\n}",
    ),
    "ragpt": MethodPaper(
        paper="Lang, Cheng, Zhong and Zhou. Retrieval-Augmented Dynamic Prompt Tuning for Incomplete Multimodal "
              "Learning. AAAI 2025. https://github.com/Jian-Lang/RAGPT",
        citation="@inproceedings{lang2025ragpt,\n  title={Retrieval-Augmented Dynamic Prompt Tuning for Incomplete "
                 "Multimodal Learning},\n  author={Lang, Jian and Cheng, Zhangtao and Zhong, Ting and Zhou, Fan},\n"
                 "  booktitle={AAAI},\n  year={2025}\n}",
    ),
}


def method_paper(name: str) -> MethodPaper:
    """The paper of method ``name``; a placeholder for methods registered without one in :data:`METHOD_PAPERS`."""
    return METHOD_PAPERS.get(name, MethodPaper(paper=f"No paper recorded for {name!r}.", citation=""))


# ---- push ---------------------------------------------------------------------------------------
def push_adapter(
    model_or_folder: Any,
    repo_id: str,
    *,
    results: Mapping[str, Any] | None = None,
    plot: Any = None,
    missing: Any = None,
    dataset: str | None = None,
    split: str = "test",
    backbone_name_or_path: str | None = None,
    tags: list[str] | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Upload an adapter (a model with an injected method, or a folder ``save_pretrained`` wrote) and its card.

    Args:
        model_or_folder: a ``MissingModalityForClassification`` with an adapter injected, or an adapter folder.
        repo_id: the Hub repository (created if needed).
        results: evaluation metrics, either as ``Trainer.evaluate()`` returns them (``eval_accuracy``,
            ``eval_missing_text/accuracy``, ...) or as ``{pattern: {metric: value}}``; needs ``dataset``.
        plot: a robustness plot, as an image file path or a matplotlib figure; uploaded and shown in the card.
        missing: the missing-modality protocol: a dataset that :func:`hf_missing.simulate_missing` produced
            (or a ``DatasetDict`` of them), or the dict :func:`hf_missing.missing_settings` returns.
        dataset: the evaluation dataset's name or Hub id (model-index metadata).
        split: the evaluated split.
        backbone_name_or_path: where the backbone weights come from (default: the model's
            ``backbone_name_or_path``, else the adapter's ``base_model_name_or_path``).
        tags: extra Hub tags.

    Returns:
        The commit of the upload.
    """
    if results and not dataset:
        raise ValueError("results need dataset=<the evaluation dataset's name or Hub id> for the model-index metadata.")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _stage(model_or_folder, Path(tmp) / "adapter")
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        backbone = _point_at_repo(folder, repo_id, backbone_name_or_path)
        plot_file = _add_plot(folder, plot)
        card = adapter_card(folder, repo_id, backbone=backbone, results=results, plot_file=plot_file,
                            missing=missing, dataset=dataset, split=split, tags=tags)
        card.save(folder / "README.md")
        method = _method_name(read_json_file(folder / ADAPTER_CONFIG_NAME), str(folder))
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message or f"Upload hf_missing {method} adapter",
                                 commit_description=commit_description, ignore_patterns=TRAINER_ONLY_FILES)


def _stage(model_or_folder: Any, folder: Path) -> Path:
    """Save the model's adapter (or copy the given folder) into ``folder`` and check it is a complete adapter."""
    if isinstance(model_or_folder, str | os.PathLike):
        source = Path(model_or_folder)
        if not source.is_dir():
            raise FileNotFoundError(f"{source} is not a folder; pass a model or the folder save_pretrained wrote.")
        shutil.copytree(source, folder)
    else:
        if not getattr(model_or_folder, "_hf_peft_config_loaded", False):
            raise ValueError("The model has no adapter injected; inject a method first (adapter='map' in "
                             "from_pretrained, or model.add_adapter(hf_missing.get_method_config(...))).")
        model_or_folder.save_pretrained(folder)
    files = sorted(p.name for p in folder.iterdir())
    needed = [n for n in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME) if n not in files]
    if needed:
        raise ValueError(f"{model_or_folder} lacks {needed}; push a folder written by "
                         "MissingModalityForClassification.save_pretrained with an adapter injected.")
    check_no_pickles(files, str(model_or_folder))
    validate_adapter_config(read_json_file(folder / ADAPTER_CONFIG_NAME), str(model_or_folder))
    return folder


def _point_at_repo(folder: Path, repo_id: str, backbone_name_or_path: str | None) -> str:
    """Record the backbone in ``config.json`` and make ``base_model_name_or_path`` name the repo itself."""
    adapter_config = read_json_file(folder / ADAPTER_CONFIG_NAME)
    config = read_json_file(folder / CONFIG_NAME)
    base = adapter_config.get("base_model_name_or_path")
    backbone = backbone_name_or_path or config.get("backbone_name_or_path") or (base if base != repo_id else None)
    if not backbone:
        raise ValueError("The adapter does not record which backbone it adapts; pass "
                         "backbone_name_or_path=<hub id or path of the CLIP/ViLT checkpoint>.")
    config["backbone_name_or_path"] = backbone
    adapter_config["base_model_name_or_path"] = repo_id
    _write_json(folder / CONFIG_NAME, config)
    _write_json(folder / ADAPTER_CONFIG_NAME, adapter_config)
    return backbone


def _add_plot(folder: Path, plot: Any) -> str | None:
    """Copy (or draw) the robustness plot into ``folder``; its file name, or None without a plot."""
    if plot is None:
        return None
    if hasattr(plot, "savefig"):
        name = f"{PLOT_STEM}.png"
        plot.savefig(folder / name)
        return name
    source = Path(plot)
    if source.suffix.lower() not in PLOT_SUFFIXES or not source.is_file():
        raise ValueError(f"plot must be a matplotlib figure or an image file ({', '.join(PLOT_SUFFIXES)}); "
                         f"got {plot!r}.")
    name = f"{PLOT_STEM}{source.suffix.lower()}"
    shutil.copyfile(source, folder / name)
    return name


# ---- model card ---------------------------------------------------------------------------------
def adapter_card(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    backbone: str | None = None,
    results: Mapping[str, Any] | None = None,
    plot_file: str | None = None,
    missing: Any = None,
    dataset: str | None = None,
    split: str = "test",
    tags: list[str] | None = None,
) -> ModelCard:
    """The model card of the adapter saved in ``folder`` (see :func:`push_adapter` for the arguments)."""
    folder = Path(folder)
    adapter_config, config = read_json_file(folder / ADAPTER_CONFIG_NAME), read_json_file(folder / CONFIG_NAME)
    method = _method_name(adapter_config, str(folder))
    backbone = backbone or config.get("backbone_name_or_path") or adapter_config.get("base_model_name_or_path")
    by_pattern = results_by_pattern(results or {})
    backbone_type = (config.get("backbone_config") or {}).get("model_type", "")
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=backbone if backbone and _is_repo_id(backbone) else None,
        library_name="peft",
        tags=list(dict.fromkeys(["hf-missing", "missing-modality", "multimodal", method, backbone_type,
                                 *(tags or [])])),
        datasets=[dataset] if dataset and _is_repo_id(dataset) else None,
        metrics=sorted({m for metrics in by_pattern.values() for m in metrics}) or None,
        eval_results=_eval_results(by_pattern, dataset, split) or None,
    )
    paper = method_paper(method)
    return ModelCard.from_template(
        card_data, template_path=str(CARD_TEMPLATE), repo_id=repo_id, title=repo_id, method=method, backbone=backbone,
        backbone_type=backbone_type, summary=METHODS[method].summary, paper=paper.paper, citation=paper.citation,
        options=_method_options(adapter_config, method), settings=adapter_config["model_settings"],
        adapter_bytes=(folder / ADAPTER_WEIGHTS_NAME).stat().st_size,
        adapter_params=_count_parameters(folder / ADAPTER_WEIGHTS_NAME),
        files=sorted(p.name for p in folder.iterdir() if p.name != "README.md"),
        missing=_missing_protocol(missing, config), results=by_pattern, dataset=dataset, split=split,
        plot_file=plot_file,
    )


def results_by_pattern(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{pattern: {metric: value}}`` from ``Trainer.evaluate()`` output (``eval_accuracy`` is the overall
    ``"all"`` row, ``eval_missing_text/accuracy`` a pattern's) or from an already nested mapping."""
    table: dict[str, dict[str, float]] = {}
    for key, value in results.items():
        if isinstance(value, Mapping):
            table.setdefault(key, {}).update({m: float(v) for m, v in value.items() if m not in SKIPPED_METRICS})
            continue
        name = key.removeprefix("eval_")
        pattern, _, metric = name.rpartition("/")
        if metric not in SKIPPED_METRICS and isinstance(value, int | float):
            table.setdefault(pattern or OVERALL, {})[metric] = float(value)
    return table


def _eval_results(by_pattern: dict[str, dict[str, float]], dataset: str | None, split: str) -> list[EvalResult]:
    return [
        EvalResult(task_type=TASK_TYPE, task_name="Classification with missing modalities", dataset_type=dataset,
                   dataset_name=dataset, dataset_config=pattern, dataset_split=split, metric_type=metric,
                   metric_name=f"{metric} ({pattern})", metric_value=value)
        for pattern, metrics in by_pattern.items()
        for metric, value in metrics.items()
    ]


def _missing_protocol(missing: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    """rate / pattern / protocol / seed / both_ratio of the simulated data, plus the model's policy."""
    if missing is None:
        return None
    if isinstance(missing, DatasetDict):
        missing = next(iter(missing.values()))
    if isinstance(missing, Dataset):
        missing = missing_settings(missing)
    keys = ("rate", "pattern", "protocol", "seed", "both_ratio", "shares")
    return {**{k: missing[k] for k in keys if k in missing}, "policy": config.get("missing_policy"),
            "modalities": config.get("modalities")}


def _method_options(adapter_config: dict[str, Any], method: str) -> dict[str, Any]:
    return {k: adapter_config[k] for k in METHODS[method].config_cls.options_help() if k in adapter_config}


def _count_parameters(path: Path) -> int:
    """Number of values stored in a safetensors file (read from its header only)."""
    with safe_open(str(path), framework="pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is no dict)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


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
    hub_kwargs = {k: v for k, v in hub_kwargs.items() if k in DOWNLOAD_KWARGS}
    if os.path.isdir(path):
        folder = _local_adapter_dir(path)
        return None if folder is None else AdapterSource(folder, _in_hub_cache(folder, hub_kwargs))
    if not _is_repo_id(path) or find_adapter_config_file(path, **hub_kwargs) is None:
        return None
    files = _repo_files(path, hub_kwargs)
    _check_adapter_files(files, path)
    folder = snapshot_download(path, allow_patterns=adapter_files(), **hub_kwargs)
    return AdapterSource(folder, remote=True)


def _local_adapter_dir(path: str) -> str | None:
    files = os.listdir(path)
    if ADAPTER_CONFIG_NAME not in files:
        return None
    if FULL_CHECKPOINT_NAMES[1] in files and is_resume_index(Path(path) / FULL_CHECKPOINT_NAMES[1]):
        files.remove(FULL_CHECKPOINT_NAMES[1])  # Trainer's resume state beside an adapter: the folder is an adapter
    _check_adapter_files(files, path)
    return path


def _check_adapter_files(files: list[str], source: str) -> None:
    """Refuse a folder that mixes a full checkpoint with an hf_missing adapter (which would win is ambiguous) and
    an adapter whose weights exist only as a pickle."""
    full = [name for name in FULL_CHECKPOINT_NAMES if name in files]
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
    return _is_repo_id(name)


def load_backbone_error(backbone: str, source: str, err: Exception) -> AdapterLoadError:
    """The error for a backbone that cannot be loaded from safetensors."""
    return AdapterLoadError(
        f"The backbone {backbone!r} named by the adapter in {source} could not be loaded from safetensors ({err}). "
        "hf_missing loads a backbone named by an adapter from safetensors weights only, because pickled weights "
        "(pytorch_model.bin) can run code. Convert it where you trust it: AutoModel.from_pretrained(path)"
        ".save_pretrained(new_path) writes model.safetensors; then pass backbone_name_or_path=new_path."
    )


# ---- validation ---------------------------------------------------------------------------------
def validate_adapter_config(adapter_config: dict[str, Any], source: str) -> MissingMethodConfig:
    """Check an ``adapter_config.json`` without any model: a known hf_missing method, valid options within
    sane sizes, allow-listed head settings and a well-formed backbone signature; returns the method config
    it describes, built from the method options alone (nothing else of the file reaches peft)."""
    method = _method_name(adapter_config, source)
    options = _method_options(adapter_config, method)
    check_option_sizes(method, options, source)
    try:
        config = get_method_config(method, **options)
    except (TypeError, ValueError) as err:
        raise AdapterLoadError(f"{source}: invalid {method} options: {err}") from err
    check_settings(adapter_config.get("model_settings"), source)
    _check_signature_format(adapter_config.get("backbone_signature"), source)
    return config


def _check_signature_format(signature: Any, source: str) -> None:
    streams = signature.get("streams") if isinstance(signature, dict) else None
    ok = signature is None or (
        isinstance(signature.get("model_type"), str) and isinstance(streams, dict)
        and all(isinstance(v, list) and len(v) == 2 and all(is_int(x) for x in v) for v in streams.values()))
    if not ok:
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
    backbone type, each stream's hidden size and layer count, the modality set and the saved modules; returns
    the backbone's config."""
    config = backbone if isinstance(backbone, PretrainedConfig) else AutoConfig.from_pretrained(backbone)
    config = getattr(config, "backbone_config", None) or config  # a saved wrapper names its backbone's config
    with torch.device("meta"):
        interface = backbone_interface_for(AutoModel.from_config(config))
    method = _method_name(adapter_config, source)
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


def _method_name(adapter_config: dict[str, Any], source: str) -> str:
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
def _is_repo_id(name: str) -> bool:
    if os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _name(backbone: str | PretrainedConfig) -> str:
    return backbone if isinstance(backbone, str) else "this model's backbone"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
