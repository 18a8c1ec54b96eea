"""The embedded default end to end: ``hf-missing demo`` and ``hf-missing benchmark``.

Real data (emoji images, names, categories) and a real backbone (MiniLM-L6 + EfficientNet-Lite0 fused into
one stream, stage-1 aligned once and cached), both offline. Every method is trained with
``transformers.Trainer`` on a training split where a share of samples misses a modality, then evaluated
with :func:`hf_missing.evaluation.predict_patterns` under every test pattern and missing rate. A method
plugs in by name: it is trained with its ``<name>-demo`` preset from ``hub_configs/`` when there is one,
else with its defaults and the baseline's demo training settings.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, Trainer

from .backbones.fused import FeatureCache, FusedProcessor, build_fused_backbone
from .data import MissingModalityCollator, simulate_missing
from .data.emoji import load_emoji_dataset
from .evaluation import TEST_PATTERNS, TEST_RATES, PatternPredictions, plot_metric_curves, predict_patterns
from .methods import list_methods, prepare_for_evaluation, prepare_for_training
from .modeling import MissingModalityForClassification
from .presets import Preset, method_preset

TASK = "single_label"


@dataclass
class DemoSettings:
    """What to run. ``epochs`` / ``train_limit`` / ``test_limit`` shrink the run (tests, quick looks)."""

    output_dir: str = "runs/demo"
    methods: Sequence[str] = field(default_factory=list_methods)
    train_rate: float = 0.7
    train_pattern: str = "both"
    seeds: Sequence[int] = (0,)
    epochs: float | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    cache_dir: str | None = None
    progress: bool = True
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Workspace:
    """Data, backbone checkpoint and collator shared by every run."""

    data: Any
    backbone_dir: Path
    collator: MissingModalityCollator
    labels: list[str]
    feature_cache: FeatureCache = field(default_factory=FeatureCache)  # frozen image features, shared by every run


def prepare(settings: DemoSettings) -> Workspace:
    """Build (or load from the cache) the emoji DatasetDict and the stage-1 fused backbone."""
    unknown = sorted(set(settings.methods) - set(list_methods()))
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; known methods: {list_methods()}.")
    cache = None if settings.cache_dir is None else Path(settings.cache_dir)
    data = load_emoji_dataset(None if cache is None else cache / "emoji")
    if settings.train_limit:
        data["train"] = data["train"].shuffle(seed=0).select(range(min(settings.train_limit, len(data["train"]))))
    if settings.test_limit:
        data["test"] = data["test"].shuffle(seed=0).select(range(min(settings.test_limit, len(data["test"]))))
    folder = build_fused_backbone(cache, data)
    collator = MissingModalityCollator(FusedProcessor.from_pretrained(folder))
    return Workspace(data, folder, collator, data["train"].features["label"].names)


def demo_preset(method: str, options: dict[str, Any] | None = None) -> Preset:
    """The method's ``<method>-demo`` preset, or the baseline's training settings with the method's defaults;
    ``options`` override the preset's method options (:func:`hf_missing.presets.method_preset`)."""
    return method_preset(method, options)


def train_and_evaluate(method: str, work: Workspace, settings: DemoSettings, seed: int,
                       train_pattern: str) -> dict[str, Any]:
    """Train ``method`` on the training split with ``train_pattern`` missing at ``settings.train_rate`` and
    evaluate it under every test pattern and rate."""
    preset = demo_preset(method, settings.method_options.get(method))
    torch.manual_seed(seed)
    backbone = AutoModel.from_pretrained(work.backbone_dir)
    backbone.share_feature_cache(work.feature_cache)  # same checkpoint, same frozen image encoder
    model = MissingModalityForClassification.from_backbone(
        backbone, num_labels=len(work.labels),
        id2label=dict(enumerate(work.labels)), label2id={n: i for i, n in enumerate(work.labels)})
    model.add_adapter(preset.method_config)
    train = simulate_missing(work.data["train"], rate=settings.train_rate, pattern=train_pattern, seed=seed)
    overrides = {"seed": seed, "disable_tqdm": not settings.progress, "eval_strategy": "no", "save_strategy": "no",
                 "report_to": "none", "logging_strategy": "no"}
    if settings.epochs is not None:
        overrides["num_train_epochs"] = settings.epochs
    run_dir = Path(settings.output_dir) / "runs" / f"{method}-{train_pattern}-seed{seed}"
    train, collator = prepare_for_training(model, train, work.collator)
    trainer = Trainer(model=model, args=preset.training_arguments(str(run_dir), **overrides), train_dataset=train,
                      data_collator=collator)
    output = trainer.train()
    test = prepare_for_evaluation(model, work.data["test"], collator)
    predictions = predict_patterns(model, test, collator, TASK, progress=settings.progress)
    return summarise(model, predictions, output.metrics, trainer.state.global_step, preset) | {
        "gates": model.diagnostics(), "train_loss": output.training_loss, "collapsed": collapsed(predictions)}


def collapsed(predictions: PatternPredictions) -> bool:
    """Whether the model predicts one class for every test sample under every pattern (a collapsed run)."""
    return all(len(set(logits.argmax(-1).tolist())) == 1 for logits in predictions.logits.values())


def summarise(model: MissingModalityForClassification, predictions: PatternPredictions, train_metrics: dict,
              steps: int, preset: Preset) -> dict[str, Any]:
    """The numbers a report needs from one trained model."""
    backbone = sum(p.numel() for n, p in model.named_parameters() if not p.requires_grad)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    beside_head = sum(v for n, v in trainable.items() if not n.startswith("head."))
    samples = len(predictions.labels) * len(predictions.logits)
    return {
        "method_options": {k: v for k, v in preset.method_config.to_dict().items() if k in
                           type(preset.method_config).options_help()},
        "per_pattern": predictions.per_pattern(),
        "curves": {pattern: predictions.curve(TEST_RATES, pattern) for pattern in TEST_PATTERNS},
        "train_seconds": train_metrics["train_runtime"],
        "step_seconds": train_metrics["train_runtime"] / max(steps, 1),
        "inference_ms_per_sample": 1000 * predictions.seconds / samples,
        "trainable_beside_head": beside_head,
        "trainable_beside_head_pct": 100 * beside_head / backbone,
    }


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """``hf-missing demo``: every method trained under ``train_pattern`` missing, compared on every test
    pattern; writes results.json, report.md and robustness.png into ``settings.output_dir``."""
    work = prepare(settings)
    runs = {m: [train_and_evaluate(m, work, settings, s, settings.train_pattern) for s in settings.seeds]
            for m in settings.methods}
    results = {"settings": asdict(settings) | {"methods": list(settings.methods)}, "methods": aggregate(runs)}
    write_outputs(results, Path(settings.output_dir), title="hf_missing demo")
    return results


def run_benchmark(settings: DemoSettings, train_patterns: Sequence[str] = TEST_PATTERNS) -> dict[str, Any]:
    """``hf-missing benchmark``: the full grid, method x training pattern x test pattern x test rate, with
    costs as ratios to the baseline measured in the same run."""
    work = prepare(settings)
    grid = {pattern: {m: aggregate_one([train_and_evaluate(m, work, settings, s, pattern) for s in settings.seeds])
                      for m in settings.methods} for pattern in train_patterns}
    results = {"settings": asdict(settings) | {"methods": list(settings.methods)}, "grid": grid}
    write_benchmark(results, Path(settings.output_dir))
    return results


# ---- aggregation over seeds ----------------------------------------------------------------------
def aggregate(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    return {method: aggregate_one(seeds) for method, seeds in runs.items()}


def aggregate_one(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every number, with the standard deviation of the headline accuracies."""
    first = seeds[0]
    out = {"seeds": len(seeds), "method_options": first["method_options"]}
    out["per_pattern"] = {p: {k: _mean([s["per_pattern"][p][k] for s in seeds]) for k in first["per_pattern"][p]}
                          for p in first["per_pattern"]}
    out["per_pattern_std"] = {p: _std([s["per_pattern"][p]["accuracy"] for s in seeds]) for p in first["per_pattern"]}
    out["curves"] = {pattern: [{k: _mean([s["curves"][pattern][i][k] for s in seeds]) for k in point}
                               for i, point in enumerate(first["curves"][pattern])] for pattern in first["curves"]}
    for key in ("train_seconds", "step_seconds", "inference_ms_per_sample", "trainable_beside_head",
                "trainable_beside_head_pct"):
        out[key] = _mean([s[key] for s in seeds])
    both = [next(p for p in s["curves"]["both"] if abs(p["rate"] - 0.7) < 1e-9)["accuracy"] for s in seeds]
    out["both_70"], out["both_70_std"] = _mean(both), _std(both)
    return out


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values))


def _std(values: list[float]) -> float:
    return float(statistics.stdev(values)) if len(values) > 1 else 0.0


# ---- outputs -----------------------------------------------------------------------------------
def markdown_table(methods: dict[str, dict[str, Any]]) -> str:
    """Accuracy per test condition and costs relative to the baseline (when it ran)."""
    base = methods.get("baseline")
    lines = ["| method | complete | missing text | missing image | both 70% | train step (x baseline) | "
             "inference (x baseline) | trained beside head (% backbone) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in methods.items():
        acc = r["per_pattern"]
        step = f"{r['step_seconds'] / base['step_seconds']:.2f}" if base else "n/a"
        infer = f"{r['inference_ms_per_sample'] / base['inference_ms_per_sample']:.2f}" if base else "n/a"
        spread = f" ± {r['both_70_std']:.3f}" if r["seeds"] > 1 else ""
        lines.append(f"| {name} | {acc['complete']['accuracy']:.3f} | {acc['missing_text']['accuracy']:.3f} | "
                     f"{acc['missing_image']['accuracy']:.3f} | {r['both_70']:.3f}{spread} | {step} | {infer} | "
                     f"{r['trainable_beside_head_pct']:.2f} |")
    return "\n".join(lines)


def plot_curves(methods: dict[str, dict[str, Any]], path: Path, pattern: str = "both", title: str = "") -> None:
    """Accuracy vs test missing rate, one line per method."""
    plot_metric_curves({name: r["curves"][pattern] for name, r in methods.items()}, path, metric="accuracy",
                       xlabel=f"test missing rate, pattern '{pattern}' (%)", title=title)


def write_outputs(results: dict[str, Any], folder: Path, title: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    plot_curves(results["methods"], folder / "robustness.png", title=title)
    settings = results["settings"]
    report = [f"# {title}", "",
              f"Trained with {100 * settings['train_rate']:.0f}% missing ('{settings['train_pattern']}'), "
              f"seeds {list(settings['seeds'])}; accuracy on the emoji test split.", "",
              markdown_table(results["methods"]), "", "![robustness](robustness.png)", ""]
    (folder / "report.md").write_text("\n".join(report), encoding="utf-8")


def write_benchmark(results: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "benchmark.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    sections = ["# hf_missing benchmark (embedded default)", ""]
    for pattern, methods in results["grid"].items():
        sections += [f"## trained with 70% missing '{pattern}'", "", markdown_table(methods), "",
                     f"![{pattern}](robustness-{pattern}.png)", ""]
        plot_curves(methods, folder / f"robustness-{pattern}.png", title=f"trained: 70% missing {pattern}")
    (folder / "benchmark.md").write_text("\n".join(sections), encoding="utf-8")
