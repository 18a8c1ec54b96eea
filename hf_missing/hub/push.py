"""Upload an adapter and its model card to the Hugging Face Hub.

:func:`push_adapter` (also behind ``MissingModalityForClassification.push_to_hub``) uploads the adapter's own files
(``adapter_config.json``, ``adapter_model.safetensors``, ``config.json``, ``missing_settings.json`` and any files
its method saves beside them, never other files of the folder), a robustness plot when given, and a ``README.md``
rendered by :func:`hf_missing.hub.card.adapter_card`.

In a pushed repo ``adapter_config.json``'s ``base_model_name_or_path`` names the repo itself: the PEFT base
model of an hf_missing adapter is the wrapper (backbone + head) that the repo's ``config.json`` describes,
and ``transformers.AutoModel.from_pretrained(<adapter repo>)`` switches to that name before loading. The
backbone weights come from ``config.json``'s ``backbone_name_or_path``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi

from ..compat.peft import adapters_injected
from ..loading import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    CONFIG_NAME,
    adapter_files,
    check_no_pickles,
    method_name,
    read_json_file,
    validate_adapter_config,
)
from .card import adapter_card

PLOT_STEM = "robustness"
PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")
# Written beside an adapter only for Trainer's resume (see MissingModalityForClassification.save_pretrained).
TRAINER_ONLY_FILES = ["trainer_resume.safetensors", "model.safetensors.index.json", "training_args.bin"]


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
        method = method_name(read_json_file(folder / ADAPTER_CONFIG_NAME), str(folder))
        return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message or f"Upload hf_missing {method} adapter",
                                 commit_description=commit_description, ignore_patterns=TRAINER_ONLY_FILES)


def _stage(model_or_folder: Any, folder: Path) -> Path:
    """Save the model's adapter (or copy the adapter's own files, :func:`adapter_files`, from the given folder:
    never the checkpoints, logs or pickles that may sit beside them) into ``folder`` and check it is complete."""
    if isinstance(model_or_folder, str | os.PathLike):
        source = Path(model_or_folder)
        if not source.is_dir():
            raise FileNotFoundError(f"{source} is not a folder; pass a model or the folder save_pretrained wrote.")
        check_no_pickles(os.listdir(source), str(source))
        folder.mkdir(parents=True)
        for name in adapter_files():
            if (source / name).is_file():
                shutil.copyfile(source / name, folder / name)
    else:
        if not adapters_injected(model_or_folder):
            raise ValueError("The model has no adapter injected; inject a method first (adapter='map' in "
                             "from_pretrained, or model.add_adapter(hf_missing.get_method_config(...))).")
        model_or_folder.save_pretrained(folder)
    files = sorted(p.name for p in folder.iterdir())
    needed = [n for n in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CONFIG_NAME) if n not in files]
    if needed:
        raise ValueError(f"{model_or_folder} lacks {needed}; push a folder written by "
                         "MissingModalityForClassification.save_pretrained with an adapter injected.")
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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
