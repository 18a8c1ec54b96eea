"""The embedded default end to end: ``hf-missing demo`` and ``hf-missing benchmark``.

Real data (emoji images, names, categories) and a real backbone (MiniLM-L6 + EfficientNet-Lite0 fused into
one stream, stage-1 aligned once and cached), both offline. Every method is trained with
``transformers.Trainer`` on a training split where a share of samples misses a modality, then evaluated
with :func:`hf_missing.evaluation.predict_patterns` under every test pattern and missing rate. A method
plugs in by name: it is trained with its ``<name>-demo`` preset from ``hub_configs/`` when there is one,
else with its defaults and the baseline's demo training settings.

Three tasks (``DemoSettings.task``, ``--task``): ``emoji`` (text + image, the 9 categories, the default),
``subcategory`` (the same samples and split, the 98 subcategories: a fine-grained label space, its stage 1 aligned on
them) and ``speech``, the spoken emoji set (:func:`hf_missing.data.emoji_speech.load_emoji_speech_dataset`: the same
samples plus each name spoken, as 96-wide speech-embedding frames) on a fused backbone whose stage 1 also aligns an
audio frame embedding. With three modalities
the report shows REP's Table 2 columns at 70% test missing: each modality left alone (``only_<m>``), each modality
missing, and every incomplete pattern mixed. A method's ``<method>-speech-demo`` preset, where there is one, trains it
on the speech task.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, Trainer

from .backbones.fused import FEATURES_FILE, FeatureCache, FusedConfig, FusedProcessor, build_fused_backbone
from .data import MissingModalityCollator, simulate_missing
from .data.audio import FEATURE_SIZE
from .data.emoji import load_emoji_dataset
from .data.emoji_speech import load_emoji_speech_dataset
from .data.modalities import FeatureInputs
from .data.simulate import ONLY_PREFIX
from .evaluation import (
    TEST_RATES,
    PatternPredictions,
    grid_patterns,
    plot_metric_curves,
    predict_patterns,
)
from .methods import list_methods, prepare_for_evaluation, prepare_for_training
from .missingness import DEFAULT_MODALITIES
from .modeling import MissingModalityForClassification
from .precision import autocast, precision_arguments, resolve_precision
from .presets import Preset, method_preset
from .runstore import RunStore
from .significance import Comparison, compare, mean_interval

TASK = "single_label"
TABLE_RATE = 0.7  # the test missing rate of the report's "<m>-only" / "<m>-missing" / mixed columns (REP Table 2)


@dataclass(frozen=True)
class DemoTask:
    """One embedded task: its data, its modalities beyond text and image (frame widths), the column it predicts and
    the presets it trains with."""

    name: str
    description: str
    feature_modalities: dict[str, int] = field(default_factory=dict)
    label_column: str = "label"
    presets: str = "demo"

    @property
    def modalities(self) -> tuple[str, ...]:
        return (*DEFAULT_MODALITIES, *self.feature_modalities)

    @property
    def preset_suffix(self) -> str:
        """Presets tried first for a method: ``<method>-<suffix>`` (then ``<method>-demo``)."""
        return self.presets

    def load(self, cache: Path | None) -> Any:
        """The task's ``DatasetDict`` (built and cached on first use), its ``label`` column the one predicted."""
        emoji = load_emoji_dataset(None if cache is None else cache / "emoji")
        if self.feature_modalities:
            emoji = load_emoji_speech_dataset(None if cache is None else cache / "emoji-speech", emoji=emoji)
        if self.label_column != "label":
            emoji = emoji.remove_columns("label").rename_column(self.label_column, "label")
        return emoji


DEMO_TASKS = {
    "emoji": DemoTask("emoji", "emoji test split (text + image)"),
    "subcategory": DemoTask("subcategory", "emoji test split, 98 subcategories (text + image)",
                            label_column="subcategory"),
    "speech": DemoTask("speech", "spoken emoji test split (text + image + audio)", {"audio": FEATURE_SIZE},
                       presets="speech-demo"),
}


def demo_task(name: str) -> DemoTask:
    """The embedded task called ``name`` (:data:`DEMO_TASKS`)."""
    if name not in DEMO_TASKS:
        raise ValueError(f"Unknown demo task {name!r}; known tasks: {list(DEMO_TASKS)}.")
    return DEMO_TASKS[name]


@dataclass
class DemoSettings:
    """What to run. ``epochs`` / ``train_limit`` / ``test_limit`` shrink the run (tests, quick looks); ``task`` is
    "emoji" (text + image) or "speech" (text + image + audio, :data:`DEMO_TASKS`). Every finished run is stored in
    ``output_dir/runs.json``; ``resume`` reuses the stored runs of the same settings instead of training them
    again. ``precision`` ("auto", "fp32" or "bf16", :func:`hf_missing.precision.resolve_precision`) is what every
    method trains and evaluates in."""

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
    task: str = "emoji"
    resume: bool = False
    precision: str = "auto"  # hf_missing.precision: "auto" is bf16 autocast where the hardware computes it natively


@dataclass
class Workspace:
    """Data, backbone checkpoint and collator shared by every run, and the task they belong to."""

    data: Any
    backbone_dir: Path
    collator: MissingModalityCollator
    labels: list[str]
    feature_cache: FeatureCache = field(default_factory=FeatureCache)  # frozen image features, shared by every run
    task: DemoTask = DEMO_TASKS["emoji"]
    features_kept: int = 0  # entries of feature_cache already in the checkpoint folder's FEATURES_FILE

    def load_image_features(self) -> None:
        """Start from the frozen image features an earlier process kept beside the checkpoint, if any."""
        path = Path(self.backbone_dir) / FEATURES_FILE
        if path.is_file():
            config = FusedConfig.from_pretrained(self.backbone_dir)
            self.feature_cache.load(path, (config.num_image_tokens, config.image_feature_dim))
            self.features_kept = len(self.feature_cache)

    def keep_image_features(self) -> None:
        """Write the frozen image features computed so far beside the checkpoint when there are new ones, so that
        the next process reuses them (the same bits: each image is encoded alone in a fixed-size chunk, in fp32)."""
        if len(self.feature_cache) > self.features_kept:
            self.feature_cache.save(Path(self.backbone_dir) / FEATURES_FILE)
            self.features_kept = len(self.feature_cache)


def prepare(settings: DemoSettings) -> Workspace:
    """Build (or load from the cache) the task's DatasetDict and its stage-1 fused backbone (aligned on the task's
    modalities: the speech task's also aligns the audio frame embedding)."""
    unknown = sorted(set(settings.methods) - set(list_methods()))
    if unknown:
        raise ValueError(f"Unknown method(s) {unknown}; known methods: {list_methods()}.")
    task = demo_task(settings.task)
    cache = None if settings.cache_dir is None else Path(settings.cache_dir)
    data = task.load(cache)
    if settings.train_limit:
        data["train"] = data["train"].shuffle(seed=0).select(range(min(settings.train_limit, len(data["train"]))))
    if settings.test_limit:
        data["test"] = data["test"].shuffle(seed=0).select(range(min(settings.test_limit, len(data["test"]))))
    folder = build_fused_backbone(cache, data, feature_modalities=task.feature_modalities or None)
    frames = [FeatureInputs(name, width) for name, width in task.feature_modalities.items()]
    processor = FusedProcessor.from_pretrained(folder)
    collator = (MissingModalityCollator(processor, modalities=[*DEFAULT_MODALITIES, *frames]) if frames
                else MissingModalityCollator(processor))
    work = Workspace(data, folder, collator, data["train"].features["label"].names, task=task)
    work.load_image_features()
    return work


def demo_preset(method: str, options: dict[str, Any] | None = None, task: str = "emoji") -> Preset:
    """The method's ``<method>-<task>-demo`` preset (speech task) or ``<method>-demo`` preset, else the baseline's
    training settings with the method's defaults; ``options`` override the preset's method options
    (:func:`hf_missing.presets.method_preset`)."""
    return method_preset(method, options, suffix=demo_task(task).preset_suffix)


def run_precision(method: str, work: Workspace, settings: DemoSettings) -> str:
    """The precision ``method``'s demo run trains and evaluates in under ``settings.precision``."""
    return resolve_precision(settings.precision, demo_preset(method, task=work.task.name).training)


def _settings_record(work: Workspace, settings: DemoSettings) -> dict[str, Any]:
    """A results file's settings: ``settings``, the methods, and the precision each method trained in."""
    return asdict(settings) | {"methods": list(settings.methods),
                               "precisions": {m: run_precision(m, work, settings) for m in settings.methods}}


def precision_setting(precision: str) -> dict[str, str]:
    """A stored run's precision setting: none for fp32 (every run stored before the precision switch was fp32, and
    stays reusable as such), else ``{"precision": ...}``, so that runs of different precisions never mix."""
    return {} if precision == "fp32" else {"precision": precision}


@dataclass
class Run:
    """One method ready to train: its model, the prepared training split, the collator it trains and evaluates with,
    its ``Trainer``, its preset and the precision it trains and evaluates in."""

    model: MissingModalityForClassification
    train: Any
    collator: Any
    trainer: Trainer
    preset: Preset
    precision: str


def build_run(method: str, work: Workspace, settings: DemoSettings, seed: int, train_pattern: str) -> Run:
    """``method`` on the stage-1 backbone with its demo preset, the training split with ``train_pattern`` missing at
    ``settings.train_rate`` (prepared by the method: REDEEM's bank and neighbours) and its ``Trainer``, untrained.
    What the demo trains, and what ``benchmarks/profile_step.py`` and ``costs.py`` time."""
    preset = demo_preset(method, settings.method_options.get(method), work.task.name)
    torch.manual_seed(seed)
    backbone = AutoModel.from_pretrained(work.backbone_dir)
    backbone.share_feature_cache(work.feature_cache)  # same checkpoint, same frozen image encoder
    model = MissingModalityForClassification.from_backbone(
        backbone, num_labels=len(work.labels),
        id2label=dict(enumerate(work.labels)), label2id={n: i for i, n in enumerate(work.labels)})
    model.add_adapter(preset.method_config)
    train = simulate_missing(work.data["train"], rate=settings.train_rate, pattern=train_pattern, seed=seed,
                             modalities=work.task.modalities)
    overrides = {"seed": seed, "disable_tqdm": not settings.progress, "eval_strategy": "no", "save_strategy": "no",
                 "report_to": "none", "logging_strategy": "no"}
    if settings.epochs is not None:
        overrides["num_train_epochs"] = settings.epochs
    precision = resolve_precision(settings.precision, preset.training)
    overrides |= precision_arguments(precision)
    run_dir = Path(settings.output_dir) / "runs" / f"{method}-{train_pattern}-seed{seed}"
    train, collator = prepare_for_training(model, train, work.collator)
    trainer = Trainer(model=model, args=preset.training_arguments(str(run_dir), **overrides), train_dataset=train,
                      data_collator=collator)
    return Run(model, train, collator, trainer, preset, precision)


def train_and_evaluate(method: str, work: Workspace, settings: DemoSettings, seed: int,
                       train_pattern: str) -> dict[str, Any]:
    """Train ``method`` (:func:`build_run`) and evaluate it under every test pattern and rate, in the precision it
    trained in."""
    run = build_run(method, work, settings, seed, train_pattern)
    output = run.trainer.train()
    model = run.model
    test = prepare_for_evaluation(model, work.data["test"], run.collator)
    with autocast(run.precision, model.device.type):
        predictions = predict_patterns(model, test, run.collator, TASK, progress=settings.progress)
    return summarise(model, predictions, output.metrics, run.trainer.state.global_step, run.preset) | {
        "gates": model.diagnostics(), "train_loss": output.training_loss, "collapsed": collapsed(predictions),
        "correct": correct_at(predictions, TABLE_RATE)}


def correct_at(predictions: PatternPredictions, rate: float) -> dict[str, list[int]]:
    """Per test sample, 1 where the prediction is right: with nothing missing (``complete``) and at ``rate`` test
    missing under each grid pattern (the paired comparisons' raw material, :mod:`hf_missing.significance`)."""
    stacked = np.stack([predictions.logits[name] for name in predictions.patterns.names]).argmax(-1)
    labels = np.asarray(predictions.labels)
    rows = np.arange(len(labels))
    codes = {"complete": np.zeros(len(labels), dtype=np.int64)}
    codes |= {p: predictions.codes_at(rate, p) for p in grid_patterns(predictions.patterns.modalities)}
    return {name: (stacked[np.asarray(c), rows] == labels).astype(int).tolist() for name, c in codes.items()}


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
    patterns = grid_patterns(predictions.patterns.modalities)
    return {
        "method_options": {k: v for k, v in preset.method_config.to_dict().items() if k in
                           type(preset.method_config).options_help()},
        "per_pattern": predictions.per_pattern(),
        "curves": {pattern: predictions.curve(TEST_RATES, pattern) for pattern in patterns},
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
    store = RunStore(Path(settings.output_dir) / "runs.json", fresh=not settings.resume)
    runs = {m: [stored_run(store, m, work, settings, s, settings.train_pattern) for s in settings.seeds]
            for m in settings.methods}
    results = {"settings": _settings_record(work, settings), "methods": aggregate(runs)}
    write_outputs(results, Path(settings.output_dir), title=_title("hf_missing demo", work.task))
    return results


def run_benchmark(settings: DemoSettings, train_patterns: Sequence[str] | None = None) -> dict[str, Any]:
    """``hf-missing benchmark``: the full grid, method x training pattern x test pattern and rate, with costs as
    ratios to the baseline measured in the same run; ``train_patterns`` defaults to the task's
    :func:`~hf_missing.evaluation.grid_patterns` (text + image: text, image, both)."""
    work = prepare(settings)
    patterns = train_patterns or grid_patterns(work.task.modalities)
    store = RunStore(Path(settings.output_dir) / "runs.json", fresh=not settings.resume)
    grid = {pattern: aggregate({m: [stored_run(store, m, work, settings, s, pattern) for s in settings.seeds]
                                for m in settings.methods}) for pattern in patterns}
    results = {"settings": _settings_record(work, settings), "grid": grid}
    write_benchmark(results, Path(settings.output_dir))
    return results


def stored_run(store: RunStore, method: str, work: Workspace, settings: DemoSettings, seed: int,
               train_pattern: str) -> dict[str, Any]:
    """The run from ``store`` when it ran under these settings, else trained now and stored (a long multi-seed run
    resumes where it stopped)."""
    key = f"{method} | {train_pattern} | seed {seed}"
    wanted = {"task": work.task.name, "options": settings.method_options.get(method), "epochs": settings.epochs,
              "rate": settings.train_rate, "pattern": train_pattern, "train_limit": settings.train_limit,
              "test_limit": settings.test_limit, "backbone": Path(work.backbone_dir).name,
              **precision_setting(run_precision(method, work, settings))}
    run = store.get(key, wanted)
    if run is None:
        run = train_and_evaluate(method, work, settings, seed, train_pattern)
        store.put(key, run, wanted)
        work.keep_image_features()
    return {k: v for k, v in run.items() if k != "settings"}


def _title(title: str, task: DemoTask) -> str:
    return title if task.name == "emoji" else f"{title}: {task.name} ({', '.join(task.modalities)})"


# ---- aggregation over seeds ----------------------------------------------------------------------
REFERENCES = ("baseline", "lora")  # the frozen backbone + head, and peft's LoRA: every other method is compared with
# each of them that ran, paired over seeds and test items


def aggregate(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per method, :func:`aggregate_one` over its seeds, and ``vs``: for each reference in :data:`REFERENCES` that ran
    (other than the method itself), the paired comparison on the same seeds and test items under each reported
    condition."""
    methods = {method: aggregate_one(seeds) for method, seeds in runs.items()}
    for method, seeds in runs.items():
        methods[method]["vs"] = {ref: paired(seeds, runs[ref]) for ref in REFERENCES if ref in runs and ref != method}
    return methods


def paired(seeds: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """:func:`hf_missing.significance.compare` of each condition's per-sample correctness (seed i against the
    reference's seed i)."""
    return {condition: compare(np.array([s["correct"][condition] for s in seeds]),
                               np.array([r["correct"][condition] for r in reference])).to_dict()
            for condition in seeds[0]["correct"]}


def aggregate_one(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of every number, with the half-width of the 95% Student-t interval of the headline
    accuracies (``*_ci``): ``at_70`` holds each test pattern's accuracy at 70% test missing (``both_70``: the
    mixed pattern's)."""
    first = seeds[0]
    out = {"seeds": len(seeds), "method_options": first["method_options"]}
    out["per_pattern"] = {p: {k: _mean([s["per_pattern"][p][k] for s in seeds]) for k in first["per_pattern"][p]}
                          for p in first["per_pattern"]}
    out["per_pattern_ci"] = {p: _half([s["per_pattern"][p]["accuracy"] for s in seeds]) for p in first["per_pattern"]}
    out["curves"] = {pattern: [{k: _mean([s["curves"][pattern][i][k] for s in seeds]) for k in point}
                               for i, point in enumerate(first["curves"][pattern])] for pattern in first["curves"]}
    for key in ("train_seconds", "step_seconds", "inference_ms_per_sample", "trainable_beside_head",
                "trainable_beside_head_pct"):
        out[key] = _mean([s[key] for s in seeds])
    at_70 = {pattern: [_accuracy_at(s["curves"][pattern], TABLE_RATE) for s in seeds] for pattern in first["curves"]}
    out["at_70"] = {pattern: _mean(values) for pattern, values in at_70.items()}
    out["at_70_ci"] = {pattern: _half(values) for pattern, values in at_70.items()}
    out["both_70"], out["both_70_ci"] = out["at_70"]["both"], out["at_70_ci"]["both"]
    out["collapsed"] = sum(bool(s.get("collapsed")) for s in seeds)
    return out


def _accuracy_at(curve: list[dict[str, float]], rate: float) -> float:
    return next(point for point in curve if abs(point["rate"] - rate) < 1e-9)["accuracy"]


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values))


def _half(values: list[float]) -> float:
    return mean_interval(values)[1]


# ---- outputs -----------------------------------------------------------------------------------
def markdown_table(methods: dict[str, dict[str, Any]]) -> str:
    """Accuracy per test condition and costs relative to the baseline (when it ran); with a third modality (curves
    with ``only_<m>`` patterns) REP's Table 2 layout (:func:`table2_markdown`)."""
    first = next(iter(methods.values()), {})
    if any(pattern.startswith(ONLY_PREFIX) for pattern in first.get("curves", {})):
        return table2_markdown(methods)
    lines = ["| method | complete | missing text | missing image | both 70% | train step (x baseline) | "
             "inference (x baseline) | trained beside head (% backbone) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in methods.items():
        acc = r["per_pattern"]
        spread = f" ± {r['both_70_ci']:.3f}" if r["seeds"] > 1 else ""
        lines.append(f"| {name} | {acc['complete']['accuracy']:.3f} | {acc['missing_text']['accuracy']:.3f} | "
                     f"{acc['missing_image']['accuracy']:.3f} | {r['both_70']:.3f}{spread} | "
                     f"{_costs(r, methods.get('baseline'))} |")
    return "\n".join(lines)


def table2_columns(modalities: Sequence[str]) -> list[tuple[str, str]]:
    """(test pattern, column heading) of REP's Table 2 at 70%: each modality left alone, each missing, then mixed."""
    alone = [(f"{ONLY_PREFIX}{m}", f"{m}-only") for m in modalities]
    missing = [(m, f"{m}-missing") for m in modalities]
    return [*alone, *missing, ("both", "mixed")]


def table2_markdown(methods: dict[str, dict[str, Any]]) -> str:
    """Accuracy on complete data, then at 70% test missing under each of REP Table 2's patterns (mean ± 95% interval
    over seeds when there are several), and the costs relative to the baseline."""
    first = next(iter(methods.values()))
    modalities = [p for p in first["curves"] if p != "both" and not p.startswith(ONLY_PREFIX)]
    columns = table2_columns(modalities)
    lines = ["| method | complete | " + " | ".join(f"{heading} 70%" for _, heading in columns)
             + " | train step (x baseline) | inference (x baseline) | trained beside head (% backbone) |",
             "|---|" + "---|" * (len(columns) + 4)]
    for name, r in methods.items():
        cells = [f"{r['at_70'][p]:.3f}" + (f" ± {r['at_70_ci'][p]:.3f}" if r["seeds"] > 1 else "")
                 for p, _ in columns]
        lines.append(f"| {name} | {r['per_pattern']['complete']['accuracy']:.3f} | {' | '.join(cells)} | "
                     f"{_costs(r, methods.get('baseline'))} |")
    return "\n".join(lines)


def comparison_markdown(methods: dict[str, dict[str, Any]]) -> str:
    """Each method minus each reference (:data:`REFERENCES`), in accuracy points, paired on the same seeds and test
    items: mean over seeds ± the seed interval's half-width, [the test-item bootstrap interval], * where both 95%
    intervals exclude 0 (:mod:`hf_missing.significance`); empty with one seed."""
    first = next(iter(methods.values()), None)
    if first is None or first["seeds"] < 2:
        return ""
    columns = [("complete", "complete"), *((p, f"{h} 70%") for p, h in _conditions(first))]
    tables = []
    for ref in REFERENCES:
        compared = {name: r["vs"][ref] for name, r in methods.items() if ref in r.get("vs", {})}
        if not compared:
            continue
        tables += [f"Paired difference against `{ref}` (points): mean over seeds ± 95% t-interval over seeds "
                   "[95% paired-bootstrap interval over test items]; * = both intervals exclude 0.", "",
                   "| method | " + " | ".join(h for _, h in columns) + " |", "|---|" + "---|" * len(columns),
                   *(f"| {name} | " + " | ".join(Comparison(**cells[p]).cell() for p, _ in columns) + " |"
                     for name, cells in compared.items()), ""]
    return "\n".join(tables)


def _conditions(r: dict[str, Any]) -> list[tuple[str, str]]:
    """(test pattern, heading) of the reported conditions at 70%: REP Table 2's with three modalities or more."""
    modalities = [p for p in r["curves"] if p != "both" and not p.startswith(ONLY_PREFIX)]
    if len(modalities) > 2:
        return table2_columns(modalities)
    return [*((m, f"{m}-missing") for m in modalities), ("both", "both")]


def _costs(r: dict[str, Any], base: dict[str, Any] | None) -> str:
    step = f"{r['step_seconds'] / base['step_seconds']:.2f}" if base else "n/a"
    infer = f"{r['inference_ms_per_sample'] / base['inference_ms_per_sample']:.2f}" if base else "n/a"
    return f"{step} | {infer} | {r['trainable_beside_head_pct']:.2f}"


def plot_curves(methods: dict[str, dict[str, Any]], path: Path, pattern: str = "both", title: str = "") -> None:
    """Accuracy vs test missing rate, one line per method."""
    plot_metric_curves({name: r["curves"][pattern] for name, r in methods.items()}, path, metric="accuracy",
                       xlabel=f"test missing rate, pattern '{pattern}' (%)", title=title)


def write_outputs(results: dict[str, Any], folder: Path, title: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    plot_curves(results["methods"], folder / "robustness.png", title=title)
    settings = results["settings"]
    task = demo_task(settings.get("task", "emoji"))
    report = [f"# {title}", "",
              f"Trained with {100 * settings['train_rate']:.0f}% missing ('{settings['train_pattern']}'), "
              f"seeds {list(settings['seeds'])}{_trained_in(settings)}; accuracy on the {task.description}.", "",
              *_table2_note(task), markdown_table(results["methods"]), "", comparison_markdown(results["methods"]), "",
              "![robustness](robustness.png)", ""]
    (folder / "report.md").write_text("\n".join(report), encoding="utf-8")


def _trained_in(settings: dict[str, Any]) -> str:
    """", in bf16" (the precisions the methods trained in), or nothing for results written before they were kept."""
    precisions = sorted(set(settings.get("precisions", {}).values()))
    return f", in {' / '.join(precisions)}" if precisions else ""


def _table2_note(task: DemoTask) -> list[str]:
    """How to read the three-modality table (nothing for text + image)."""
    if len(task.modalities) < 3:
        return []
    return ["Columns as REP's Table 2, each at 70% test missing: '<m>-only': 70% of the test samples keep modality m "
            "alone (pattern only_<m>); '<m>-missing': 70% lack m; 'mixed': 70% incomplete, spread evenly over "
            "every incomplete pattern (pattern both). 'complete': no test sample misses anything. The plot shows "
            "the mixed pattern over every test rate.", ""]


def write_benchmark(results: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "benchmark.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    task = demo_task(results["settings"].get("task", "emoji"))
    settings = results["settings"]
    sections = [f"# {_title('hf_missing benchmark (embedded default)', task)}", "",
                f"Seeds {list(settings['seeds'])}{_trained_in(settings)}; accuracy on the {task.description}, "
                f"{100 * settings['train_rate']:.0f}% missing in training under each pattern below.", "",
                *_table2_note(task)]
    for pattern, methods in results["grid"].items():
        sections += [f"## trained with 70% missing '{pattern}'", "", markdown_table(methods), "",
                     comparison_markdown(methods), "",
                     f"![{pattern}](robustness-{pattern}.png)", ""]
        plot_curves(methods, folder / f"robustness-{pattern}.png", title=f"trained: 70% missing {pattern}")
    (folder / "benchmark.md").write_text("\n".join(sections), encoding="utf-8")
