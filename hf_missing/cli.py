"""``hf-missing``: command-line entry point.

``hf-missing train`` runs a short end-to-end job offline: a tiny random CLIP/ViLT backbone, the
synthetic shapes set with simulated missingness, an adapter trained with ``transformers.Trainer``,
per-pattern evaluation, and the adapter saved (and reloaded to check it is bit-identical).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from transformers import Trainer, TrainingArguments

from . import metrics
from .data import MissingModalityCollator, missing_settings, simulate_missing
from .data.synthetic import shapes_dataset, tiny_backbone, tiny_processor
from .methods import get_method_config, list_methods
from .modeling import MissingModalityForClassification


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-missing", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("methods", help="List the available methods and their options.")
    train = sub.add_parser("train", help="Short offline train/evaluate run on a tiny backbone.")
    train.add_argument("--backbone", choices=("clip", "vilt"), default="vilt")
    train.add_argument("--method", default="map", help=f"One of {list_methods()}.")
    train.add_argument("--rate", type=float, default=0.7, help="Missing rate (both modalities, MAP protocol).")
    train.add_argument("--epochs", type=float, default=8.0)
    train.add_argument("--learning-rate", type=float, default=1e-2)
    train.add_argument("--n-train", type=int, default=384)
    train.add_argument("--n-test", type=int, default=192)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--output-dir", default="runs/quickstart")
    for name, help_text, output in (
        ("demo", "Embedded default: real packaged encoders + emoji data; trains and compares every method.",
         "runs/demo"),
        ("benchmark", "Full grid on the embedded default: method x training pattern x test pattern and rate, "
                      "plus costs relative to the baseline.", "benchmarks/results"),
    ):
        _add_demo_arguments(sub.add_parser(name, help=help_text), output)
    return parser


def _add_demo_arguments(parser: argparse.ArgumentParser, output_dir: str) -> None:
    parser.add_argument("--methods", nargs="+", default=list_methods(), help=f"Subset of {list_methods()}.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--rate", type=float, default=0.7, help="Training missing rate.")
    parser.add_argument("--pattern", default="both", help="Training missing pattern (demo only).")
    parser.add_argument("--epochs", type=float, default=None, help="Override the presets' epochs.")
    parser.add_argument("--train-limit", type=int, default=None, help="Use only this many training samples.")
    parser.add_argument("--test-limit", type=int, default=None, help="Use only this many test samples.")
    parser.add_argument("--cache-dir", default=None, help="Data/backbone cache (default $HF_MISSING_CACHE or "
                                                           "~/.cache/hf_missing).")
    parser.add_argument("--output-dir", default=output_dir)
    parser.add_argument("--no-progress", action="store_true")


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoSettings, run_benchmark, run_demo

    settings = DemoSettings(output_dir=args.output_dir, methods=args.methods, train_rate=args.rate,
                            train_pattern=args.pattern, seeds=args.seeds, epochs=args.epochs,
                            train_limit=args.train_limit, test_limit=args.test_limit, cache_dir=args.cache_dir,
                            progress=not args.no_progress)
    if args.command == "demo":
        run_demo(settings)
        print(f"Wrote {args.output_dir}/report.md, results.json and robustness.png")
    else:
        run_benchmark(settings)
        print(f"Wrote {args.output_dir}/benchmark.md and benchmark.json")
    return 0


def _methods() -> int:
    from .methods import METHODS

    for name in list_methods():
        spec = METHODS[name]
        print(f"{name}: {spec.summary}")
        for option, help_text in spec.config_cls.options_help().items():
            print(f"    {option}: {help_text}")
    return 0


def _train(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    data = simulate_missing(shapes_dataset(args.n_train, args.n_test, seed=args.seed), rate=args.rate,
                            pattern="both", protocol="map", seed=args.seed)
    labels = data["train"].features["label"].names
    model = MissingModalityForClassification.from_backbone(
        tiny_backbone(args.backbone, seed=args.seed), num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    model.add_adapter(get_method_config(args.method))
    training_args = TrainingArguments(
        output_dir=args.output_dir, use_cpu=True, report_to="none", num_train_epochs=args.epochs,
        per_device_train_batch_size=32, per_device_eval_batch_size=64, learning_rate=args.learning_rate,
        weight_decay=0.02, warmup_steps=0.1, lr_scheduler_type="linear", logging_steps=10, save_strategy="no",
        eval_strategy="no", remove_unused_columns=False, seed=args.seed,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["test"],
                      data_collator=MissingModalityCollator(tiny_processor(args.backbone)),
                      compute_metrics=metrics.for_task("single_label"))
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
    return _train(args)


if __name__ == "__main__":
    sys.exit(main())
