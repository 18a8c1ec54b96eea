"""``hf-missing``: command-line entry point.

``hf-missing train --data SRC`` trains on any dataset: a published dataset's folder with its ``--preset``, or a
``save_to_disk`` folder, an imagefolder, CSV / JSON Lines files with image paths or a Hub id
(:func:`hf_missing.data.sources.load_data`, columns mapped by ``--text-column`` / ``--image-column`` /
``--label-column`` / ``--column``), with a preset's settings or a method's demo settings changed by ``--method``,
``--backbone``, ``--rate``, ``--pattern``, ``--protocol``, ``--task``, ``--epochs`` and ``--training-args key=value``;
values absent in the data are natural missingness. Both go through :func:`hf_missing.training.build_training`.
Without ``--data`` or ``--preset`` it runs a short offline job on a tiny random backbone and synthetic shapes.
``hf-missing evaluate`` measures a saved adapter under every missing pattern and rate
(:func:`hf_missing.training.evaluate_adapter`) and ``hf-missing push`` uploads an adapter with its model card
(:func:`hf_missing.push_adapter`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainingArguments

from . import metrics
from .backbones.tiny import TINY_BACKBONES, tiny_backbone, tiny_dataset, tiny_processor
from .data import MissingModalityCollator, missing_settings, simulate_missing
from .data.loaders import DATASET_SPECS
from .data.sources import load_data
from .data.synthetic import CLASSES
from .hub import push_adapter
from .methods import get_method_config, list_methods
from .metrics import TASKS
from .modeling import MissingModalityForClassification
from .precision import PRECISIONS
from .presets import TASK_METRICS, Preset, load_preset, method_preset, training_overrides

if TYPE_CHECKING:
    from .demo import DemoSettings
from .training import (
    TEST_RATES,
    build_training,
    evaluate_adapter,
    read_results,
    saved_missing_settings,
    train_and_save,
    write_evaluation,
)

DEFAULT_METHOD = "map"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-missing", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="List the available methods and their options.")
    _add_train_arguments(sub.add_parser("train", help="Train on any dataset (--data, with or without --preset), or "
                                                      "without either a short offline run on a tiny backbone."))
    _add_evaluate_arguments(sub.add_parser("evaluate", help="Evaluate a saved adapter under every missing pattern "
                                                            "and rate on a dataset's test split."))
    _add_push_arguments(sub.add_parser("push", help="Upload an adapter folder and its model card to the Hub."))
    for name, help_text in (
        ("demo", "Embedded default: real packaged encoders + emoji data (--task speech: + spoken names as audio); "
                 "trains and compares every method."),
        ("benchmark", "Full grid on the embedded default: method x training pattern x test pattern and rate, "
                      "plus costs relative to the baseline."),
    ):
        output = DEMO_OUTPUTS[name]
        demo = sub.add_parser(name, help=help_text)
        _add_demo_arguments(demo, output)
    demo.add_argument("--ablation", default=None, metavar="METHOD",
                      help="Train the rows of METHOD's ablation tables (rep: the REP paper's Tables 3-4) for every "
                           f"seed instead of the grid; default output {ABLATION_OUTPUT}.")
    return parser


DEMO_OUTPUTS = {"demo": "runs/demo", "benchmark": "benchmarks/results"}
DEFAULT_SEEDS = {"demo": [0], "benchmark": [0, 1, 2]}
ABLATION_OUTPUT = "benchmarks/results/ablation-{method}"


def _add_train_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument("--data", default=None, help="A published dataset's folder (with its --preset), a save_to_disk "
                                                    "folder, an imagefolder, a folder of train/test .csv or .jsonl "
                                                    "files (or one file) with image paths, or a Hub dataset id.")
    train.add_argument("--preset", default=None, help="Preset name or JSON file (hf_missing.list_presets()); without "
                                                      "it, --method's demo preset (CPU-sized) sets the training.")
    train.add_argument("--method", default=None, help=f"One of {list_methods()} (default {DEFAULT_METHOD}); not "
                                                      "with --preset, which names its method.")
    train.add_argument("--backbone", default=None, help="A CLIP / ViLT / fused checkpoint path or Hub id, or 'fused' "
                                                        "(the embedded default, aligned on the data; default without "
                                                        f"--preset). Without --data: one of {list(TINY_BACKBONES)}.")
    _add_data_arguments(train)
    _add_missing_arguments(train)
    train.add_argument("--epochs", type=float, default=None, help="Training epochs (quickstart default 8).")
    train.add_argument("--training-args", nargs="+", default=[], metavar="KEY=VALUE",
                       help="TrainingArguments fields, values read as JSON when they parse: learning_rate=1e-3 "
                            "use_cpu=false per_device_train_batch_size=16.")
    train.add_argument("--max-steps", type=int, default=None, help="Stop after this many steps (with --data).")
    train.add_argument("--no-fp16", action="store_true", help="Train in fp32 (with --data; e.g. on a CPU).")
    train.add_argument("--cache-dir", default=None, help="Where the fused backbone's alignments are cached "
                                                         "(default $HF_MISSING_CACHE or ~/.cache/hf_missing).")
    train.add_argument("--output-dir", default=None, help="Default runs/<preset name>, or runs/quickstart.")
    quick = train.add_argument_group("quickstart only (without --data)")
    quick.add_argument("--learning-rate", type=float, default=1e-2)
    quick.add_argument("--n-train", type=int, default=384)
    quick.add_argument("--n-test", type=int, default=192)
    quick.add_argument("--seed", type=int, default=0)


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text-column", default="text", help="The data's text column (default text).")
    parser.add_argument("--image-column", default="image", help="The data's image column: images or file paths.")
    parser.add_argument("--label-column", default="label", help="The data's label column (default label).")
    parser.add_argument("--column", nargs="+", default=[], metavar="MODALITY=COLUMN",
                        help="Columns of other modalities, e.g. audio=mfcc.")
    parser.add_argument("--test-size", type=float, default=None, help="Carve a stratified test split of this "
                                                                      "fraction from train when the data has none.")
    parser.add_argument("--task", default=None, choices=TASKS, help="Default: the preset's, else single_label "
                                                                    "(train) or the adapter head's (evaluate).")


def _add_missing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rate", type=float, default=None, help="Training missing rate, natural missingness "
                                                                 "included (quickstart default 0.7).")
    parser.add_argument("--pattern", default=None, help="Simulated pattern: a modality name or 'both'.")
    parser.add_argument("--protocol", default=None, help="map, ragpt, redeem or per_epoch.")


def _add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="Adapter folder or Hub repo id.")
    parser.add_argument("--data", required=True, help="As for train: a published dataset's folder (with --preset) or "
                                                      "any dataset; its test split is evaluated.")
    parser.add_argument("--preset", default=None, help="Preset naming the dataset, task and metric (optional).")
    _add_data_arguments(parser)
    parser.add_argument("--rates", nargs="+", type=float, default=list(TEST_RATES), help="Test missing rates.")
    parser.add_argument("--output-dir", default="runs/evaluate")


def _add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="Adapter folder (written by save_pretrained).")
    parser.add_argument("--repo", required=True, help="Hub repository, ORG/NAME.")
    parser.add_argument("--results", default=None, help="JSON metrics: results.json of `evaluate`, eval_report.json "
                                                         "of `train`, Trainer.evaluate() output or {pattern: "
                                                         "{metric: value}}.")
    parser.add_argument("--plot", default=None, help="Robustness plot image shown in the card.")
    parser.add_argument("--dataset", default=None, help="Evaluation dataset name or Hub id (needed with --results).")


def _add_demo_arguments(parser: argparse.ArgumentParser, output_dir: str) -> None:
    parser.add_argument("--task", choices=("emoji", "subcategory", "speech"), default="emoji",
                        help="emoji: text + image, the 9 categories (default). subcategory: the same samples, the "
                             "98 subcategories (a fine-grained label space). speech: the spoken emoji set, text + "
                             "image + audio (speech-embedding frames of each name, built once, ~70 s) on a fused "
                             "backbone aligned with audio too; trained with --rate missing over every incomplete "
                             "pattern ('both') and reported as REP's Table 2 at 70%%: text-/image-/audio-only, "
                             "text-/image-/audio-missing, mixed, plus complete. Default output folders get a "
                             "'-<task>' suffix.")
    parser.add_argument("--methods", nargs="+", default=list_methods(), help=f"Subset of {list_methods()}.")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="Training seeds (default: 0 for the demo, 0 1 2 for the benchmark and ablations). With "
                             "several, every number is a mean ± 95%% interval and each method is compared with the "
                             "baseline, paired on seeds and test items.")
    parser.add_argument("--resume", action="store_true",
                        help="Reuse the runs stored in the output folder's runs.json that ran under the same "
                             "settings and stage-1 checkpoint, and train only the missing ones (ablations always "
                             "resume).")
    parser.add_argument("--rate", type=float, default=0.7, help="Training missing rate.")
    parser.add_argument("--pattern", default="both", help="Training missing pattern (demo only): a modality name, "
                                                          "'both' (alias 'mixed': every incomplete pattern) or, "
                                                          "with --task speech, only_<modality>.")
    parser.add_argument("--epochs", type=float, default=None, help="Override the presets' epochs.")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="What every method trains and evaluates in: bf16 (autocast mixed precision), fp32, or "
                             "auto (default): bf16 where the hardware multiplies bfloat16 natively (a CPU with "
                             "AVX512-BF16 or AMX, a bf16 GPU), else fp32.")
    parser.add_argument("--train-limit", type=int, default=None, help="Use only this many training samples.")
    parser.add_argument("--test-limit", type=int, default=None, help="Use only this many test samples.")
    parser.add_argument("--cache-dir", default=None, help="Data/backbone cache (default $HF_MISSING_CACHE or "
                                                           "~/.cache/hf_missing).")
    parser.add_argument("--output-dir", default=None, help=f"Default {output_dir}.")
    parser.add_argument("--no-progress", action="store_true")


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_benchmark, run_demo

    ablation = getattr(args, "ablation", None)
    default = ABLATION_OUTPUT.format(method=ablation) if ablation else DEMO_OUTPUTS[args.command]
    args.output_dir = args.output_dir or (default if args.task == "emoji" else f"{default}-{args.task}")
    settings = DemoSettings(output_dir=args.output_dir, methods=args.methods, train_rate=args.rate,
                            train_pattern=args.pattern, seeds=args.seeds or DEFAULT_SEEDS[args.command],
                            epochs=args.epochs, train_limit=args.train_limit, test_limit=args.test_limit,
                            cache_dir=args.cache_dir, progress=not args.no_progress, task=args.task,
                            resume=args.resume or bool(ablation), precision=args.precision)
    if args.command == "demo":
        run_demo(settings)
        print(Path(args.output_dir, "report.md").read_text(encoding="utf-8"))
        print(f"Wrote {args.output_dir}/report.md, results.json and robustness.png")
    elif ablation:
        _ablation(settings, ablation)
    else:
        run_benchmark(settings)
        print(Path(args.output_dir, "benchmark.md").read_text(encoding="utf-8"))
        print(f"Wrote {args.output_dir}/benchmark.md and benchmark.json")
    return 0


def _ablation(settings: DemoSettings, method: str) -> None:
    from .ablation import run_ablation

    run_ablation(settings, method)
    print(Path(settings.output_dir, "ablation.md").read_text(encoding="utf-8"))
    print(f"Wrote {settings.output_dir}/ablation.md, ablation.json and runs.json")


def _methods() -> int:
    from .methods import METHODS

    for name in list_methods():
        spec = METHODS[name]
        print(f"{name}: {spec.summary}")
        for option, help_text in spec.config_cls.options_help().items():
            print(f"    {option}: {help_text}")
    return 0


def _train(args: argparse.Namespace) -> int:
    if args.data is None:
        if args.preset is not None:
            raise SystemExit("hf-missing train --preset needs --data <dataset folder, file or Hub id>.")
        return _quickstart(args)
    if args.preset is not None and args.method is not None:
        raise SystemExit("Pass --preset (which names its method) or --method, not both.")
    preset = _preset(args)
    overrides: dict[str, Any] = {}
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.no_fp16:
        overrides["fp16"] = False
    output_dir = args.output_dir or f"runs/{preset.name}"
    run = build_training(preset, _data(args, preset), output_dir, backbone=args.backbone, cache_dir=args.cache_dir,
                         **overrides)
    report = train_and_save(run)
    print(json.dumps({k: v for k, v in report.items() if k != "missing"}, indent=2))
    return 0


def _preset(args: argparse.Namespace) -> Preset:
    """The preset (or ``--method``'s demo preset) with the command line's settings applied."""
    preset = load_preset(args.preset) if args.preset else method_preset(args.method or DEFAULT_METHOD)
    missing = {k: v for k, v in (("rate", args.rate), ("pattern", args.pattern), ("protocol", args.protocol))
               if v is not None}
    training = training_overrides(args.training_args)
    if args.epochs is not None:
        training["num_train_epochs"] = args.epochs
    published = preset.data.dataset in DATASET_SPECS and _default_columns(args)
    return preset.with_settings(dataset=None if published else str(args.data), task=args.task,
                                backbone=None if args.preset else "fused", missing=missing, training=training)


def _default_columns(args: argparse.Namespace) -> bool:
    return (args.text_column, args.image_column, args.label_column, args.column) == ("text", "image", "label", [])


def _data(args: argparse.Namespace, preset: Preset | None) -> Any:
    """``--data`` as the preset's published-dataset folder (read by its loader), else through
    :func:`~hf_missing.data.sources.load_data` with the column flags."""
    if preset is not None and preset.data.dataset in DATASET_SPECS and _default_columns(args):
        return args.data
    extra = dict(_pair(item, "--column") for item in args.column)
    columns = {"text": args.text_column, "image": args.image_column, **extra}
    return load_data(args.data, columns=columns, label_column=args.label_column, modalities=tuple(columns),
                     test_size=args.test_size)


def _pair(item: str, flag: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
        raise SystemExit(f"{flag} takes NAME=VALUE pairs, got {item!r}.")
    return key, value


def _evaluate(args: argparse.Namespace) -> int:
    preset = load_preset(args.preset) if args.preset else None
    data = _data(args, preset)
    summary = evaluate_adapter(args.adapter, preset, data, rates=args.rates, task=args.task)
    metric = preset.data.metric if preset and not args.task else TASK_METRICS[summary["task"]][0]
    name = preset.data.dataset if preset else args.data
    folder = write_evaluation(summary, args.output_dir, metric=metric, title=f"{args.adapter} on {name}")
    print((folder / "report.md").read_text(encoding="utf-8"))
    return 0


def _push(args: argparse.Namespace) -> int:
    results = read_results(args.results) if args.results else None
    commit = push_adapter(args.adapter, args.repo, results=results, plot=args.plot,
                          missing=saved_missing_settings(args.adapter), dataset=args.dataset)
    print(f"Pushed {args.adapter} to {commit.commit_url}")
    return 0


def _quickstart(args: argparse.Namespace) -> int:
    backbone = args.backbone or "vilt"
    if backbone not in TINY_BACKBONES:
        raise SystemExit(f"The quickstart (no --preset) runs a tiny {list(TINY_BACKBONES)} backbone; got "
                         f"--backbone {backbone!r}. Pass --preset to train a real backbone.")
    args.backbone, args.epochs = backbone, 8.0 if args.epochs is None else args.epochs
    args.method, args.rate = args.method or DEFAULT_METHOD, 0.7 if args.rate is None else args.rate
    args.output_dir = args.output_dir or "runs/quickstart"
    torch.manual_seed(args.seed)
    labels = list(CLASSES)
    model = MissingModalityForClassification.from_backbone(
        tiny_backbone(args.backbone, seed=args.seed), num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    modalities = model.interface.modalities
    data = simulate_missing(tiny_dataset(args.backbone, args.n_train, args.n_test, seed=args.seed),
                            rate=args.rate, pattern=args.pattern or "both", protocol=args.protocol or "map",
                            seed=args.seed, modalities=modalities)
    model.add_adapter(get_method_config(args.method))
    training_args = TrainingArguments(
        output_dir=args.output_dir, use_cpu=True, report_to="none", num_train_epochs=args.epochs,
        per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=args.learning_rate,
        weight_decay=0.02, warmup_steps=0.1, lr_scheduler_type="linear", logging_steps=10, save_strategy="no",
        eval_strategy="no", remove_unused_columns=False, seed=args.seed,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["test"],
                      data_collator=MissingModalityCollator(tiny_processor(args.backbone),
                                                            modalities=model.interface.inputs),
                      compute_metrics=metrics.for_task("single_label", modalities=modalities))
    trainer.train()
    results = trainer.evaluate()
    adapter_dir = os.path.join(args.output_dir, "adapter")
    model.save_pretrained(adapter_dir)
    report = {"backbone": args.backbone, "method": args.method, "missing": missing_settings(data["test"]),
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "eval": results, "adapter_dir": adapter_dir}
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(json.dumps({k: v for k, v in report.items() if k != "missing"}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "methods":
        return _methods()
    if args.command in ("demo", "benchmark"):
        return _demo(args)
    commands = {"train": _train, "evaluate": _evaluate, "push": _push}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
