"""Push adapters to the Hugging Face Hub with a model card (pulling them back safely is :mod:`hf_missing.loading`).

Pushing (:func:`push_adapter`, also behind ``MissingModalityForClassification.push_to_hub``) uploads the
adapter's own files (``adapter_config.json``, ``adapter_model.safetensors``, ``config.json``,
``missing_settings.json`` and any files its method saves beside them, never other files of the folder), a
robustness plot when given, and a ``README.md`` rendered from ``model_cards/adapter_card.md``: base model, method
and paper, the missing-modality protocol, results per missing pattern (as model-index ``EvalResult`` rows) and a
loading snippet.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from huggingface_hub import (
    CommitInfo,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
)
from safetensors import safe_open

from ..data import missing_settings
from ..loading import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    CONFIG_NAME,
    adapter_files,
    check_no_pickles,
    is_repo_id,
    method_name,
    method_options,
    read_json_file,
    validate_adapter_config,
)
from ..methods import METHODS

CARD_TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / "adapter_card.md"
PLOT_STEM = "robustness"
PLOT_SUFFIXES = (".png", ".jpg", ".jpeg", ".svg", ".gif", ".webp")
# Written beside an adapter only for Trainer's resume (see MissingModalityForClassification.save_pretrained).
TRAINER_ONLY_FILES = ["trainer_resume.safetensors", "model.safetensors.index.json", "training_args.bin"]
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
        if not getattr(model_or_folder, "_hf_peft_config_loaded", False):
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
    method = method_name(adapter_config, str(folder))
    backbone = backbone or config.get("backbone_name_or_path") or adapter_config.get("base_model_name_or_path")
    by_pattern = results_by_pattern(results or {})
    backbone_type = (config.get("backbone_config") or {}).get("model_type", "")
    card_data = ModelCardData(
        model_name=repo_id.split("/")[-1],
        base_model=backbone if backbone and is_repo_id(backbone) else None,
        library_name="peft",
        tags=list(dict.fromkeys(["hf-missing", "missing-modality", "multimodal", method, backbone_type,
                                 *(tags or [])])),
        datasets=[dataset] if dataset and is_repo_id(dataset) else None,
        metrics=sorted({m for metrics in by_pattern.values() for m in metrics}) or None,
        eval_results=_eval_results(by_pattern, dataset, split) or None,
    )
    paper = method_paper(method)
    return ModelCard.from_template(
        card_data, template_path=str(CARD_TEMPLATE), repo_id=repo_id, title=repo_id, method=method, backbone=backbone,
        backbone_type=backbone_type, summary=METHODS[method].summary, paper=paper.paper, citation=paper.citation,
        options=method_options(adapter_config, method), settings=adapter_config["model_settings"],
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


def _count_parameters(path: Path) -> int:
    """Number of values stored in a safetensors file (read from its header only)."""
    with safe_open(str(path), framework="pt") as f:
        return sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (safe_open is no dict)


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
