"""Where one training step and one evaluation batch go, per method, on the embedded default (issue 19 item 3).

Each method is built as ``hf-missing demo`` builds it (its ``<method>-demo`` preset, the demo's training split with
70% "both" missing, :func:`~hf_missing.methods.prepare_for_training` done once: REDEEM's bank and neighbours are
precomputed, as in training), then one fixed batch is timed phase by phase, ``--repeats`` times (median ms):

- ``text collate``: tokenisation (``TextInputs.collate``); ``image collate``: decoding, resizing and normalising the
  images (``ImageInputs.collate``); ``collate``: the whole collator (both, plus labels, codes and method extras);
- ``image features``: the frozen image encoder's cached features for the batch (pixel hashing + lookup; the cache
  is warm, as after the first epoch);
- ``forward`` (train mode, loss included), ``backward``, ``optimizer`` (Trainer's AdamW step + zero_grad);
- ``eval collate`` / ``eval forward``: one evaluation batch (no_grad, eval mode).

``step`` is collate + forward + backward + optimizer. A cProfile of whole training steps lists, per method, the
functions with the most own time. Writes ``<output-dir>/profile.md`` and ``profile.json`` (``profile-bf16.*`` under
bf16). Run: ``python benchmarks/profile_step.py [--methods ...] [--repeats 5] [--precision auto|fp32|bf16]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hf_missing.data import simulate_missing
from hf_missing.data.modalities import ImageInputs, TextInputs
from hf_missing.demo import DemoSettings, Run, Workspace, build_run, prepare
from hf_missing.methods import list_methods, prepare_for_evaluation
from hf_missing.missingness import MISSING_TYPE_COLUMN
from hf_missing.precision import PRECISIONS, autocast, resolve_precision

TRAIN_PHASES = ("text collate", "image collate", "collate", "image features", "forward", "backward", "optimizer")


def median_ms(action: Callable[[], Any], repeats: int) -> float:
    """Median wall milliseconds of ``action`` over ``repeats`` calls (after one warm-up call)."""
    action()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def build(method: str, work: Workspace, seed: int = 0) -> Run:
    """The demo's run of ``method`` (:func:`hf_missing.demo.build_run`: its preset, the training split with 70% "both"
    missing, prepared by the method), its optimizer created; nothing is trained or written."""
    settings = DemoSettings(output_dir=tempfile.gettempdir(), progress=False)
    run = build_run(method, work, settings, seed, settings.train_pattern)
    run.trainer.create_optimizer()
    return run


def evaluation_samples(run: Run, work: Workspace, size: int) -> list[dict[str, Any]]:
    """The first ``size`` test samples with 70% "both" missing, prepared for evaluation by the method."""
    test = simulate_missing(work.data["test"], rate=0.7, pattern="both", seed=0, modalities=work.task.modalities)
    return samples(prepare_for_evaluation(run.model, test, run.collator), size)


def samples(dataset: Any, size: int) -> list[dict[str, Any]]:
    """The first ``size`` rows as the dicts a data loader hands the collator."""
    return [dataset[i] for i in range(size)]


def modality_values(collator: Any, features: list[dict[str, Any]], kind: type) -> tuple[Any, list[Any]]:
    """The collator's declaration of the first modality of ``kind`` and the batch's raw values for it (None where
    the sample's ``missing_type`` drops it)."""
    k, modality = next((k, m) for k, m in enumerate(collator.inputs) if isinstance(m, kind))
    present = collator.patterns.present(collator.patterns.codes([f[MISSING_TYPE_COLUMN] for f in features]))
    column = collator.column(modality.name)
    return modality, [f[column] if present[i, k] else None for i, f in enumerate(features)]


def train_phases(model: Any, collator: Any, optimizer: Any, features: list[dict[str, Any]],
                 repeats: int, precision: str) -> dict[str, float]:
    """Median ms of each phase of one training step (module docstring); the collate, forward, backward and
    optimizer phases are split from the same whole steps, one warm-up step first."""
    model.train()
    processor = collator.processor  # a method's wrapping collator (REDEEM's) passes attributes through
    times = {}
    for name, kind in (("text collate", TextInputs), ("image collate", ImageInputs)):
        modality, values = modality_values(collator, features, kind)
        times[name] = median_ms(lambda m=modality, v=values: m.collate(v, processor), repeats)
    pixels = collator(features)["pixel_values"]
    times["image features"] = median_ms(lambda: model.backbone.embeddings.image_features(pixels), repeats)
    steps = [step_phases(model, collator, optimizer, features, precision) for _ in range(repeats + 1)][1:]
    for phase in ("collate", "forward", "backward", "optimizer", "step"):
        times[phase] = statistics.median(s[phase] for s in steps)
    return times


def step_phases(model: Any, collator: Any, optimizer: Any, features: list[dict[str, Any]],
                precision: str) -> dict[str, float]:
    """Wall ms of each phase of one whole training step (the forward under ``precision``'s autocast, as Trainer)."""
    marks = [time.perf_counter()]
    batch = collator(features)
    marks.append(time.perf_counter())
    with autocast(precision, "cpu"):
        loss = model(**batch).loss
    marks.append(time.perf_counter())
    loss.backward()
    marks.append(time.perf_counter())
    optimizer.step()
    optimizer.zero_grad()
    marks.append(time.perf_counter())
    ms = [1000 * (b - a) for a, b in itertools.pairwise(marks)]
    return dict(zip(("collate", "forward", "backward", "optimizer"), ms, strict=True)) | {"step": sum(ms)}


def eval_phases(model: Any, collator: Any, features: list[dict[str, Any]], repeats: int,
                precision: str) -> dict[str, float]:
    """Median ms of collating and running one evaluation batch."""
    model.eval()
    batch = collator(features)
    batch.pop("labels", None)
    with torch.no_grad(), autocast(precision, "cpu"):
        forward = median_ms(lambda: model(**batch), repeats)
    return {"eval collate": median_ms(lambda: collator(features), repeats), "eval forward": forward}


def top_functions(model: Any, collator: Any, optimizer: Any, features: list[dict[str, Any]], steps: int,
                  precision: str, rows: int = 12) -> str:
    """cProfile of ``steps`` whole training steps: the ``rows`` functions with the most own time."""
    model.train()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        step_phases(model, collator, optimizer, features, precision)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).strip_dirs().sort_stats("tottime").print_stats(rows)
    return out.getvalue().split("\n", 4)[-1].strip()


def profile_method(method: str, work: Workspace, args: argparse.Namespace) -> dict[str, Any]:
    run = build(method, work)
    features = samples(run.train, args.batch_size)
    optimizer = run.trainer.optimizer
    times = train_phases(run.model, run.collator, optimizer, features, args.repeats, args.precision)
    times |= eval_phases(run.model, run.collator, evaluation_samples(run, work, args.eval_batch_size), args.repeats,
                         args.precision)
    return {"ms": times, "cprofile": top_functions(run.model, run.collator, optimizer, features, args.repeats,
                                                   args.precision)}


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    columns = [*TRAIN_PHASES, "step", "eval collate", "eval forward"]
    lines = ["# One training step and one evaluation batch per method (embedded default)", "",
             f"`python benchmarks/profile_step.py --repeats {args.repeats} --precision {args.precision}` on "
             f"{torch.get_num_threads()} threads: "
             f"median ms over {args.repeats} repeats; training batch {args.batch_size}, evaluation batch "
             f"{args.eval_batch_size}; phases as the script's docstring defines them ('collate' includes the text "
             "and image collates, 'forward' includes 'image features'; 'step' = collate + forward + backward + "
             "optimizer, split from the same steps).", "",
             "| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for method, r in results.items():
        lines.append(f"| {method} | " + " | ".join(f"{r['ms'][c]:.1f}" for c in columns) + " |")
    for method, r in results.items():
        lines += ["", f"## {method}: most own time over {args.repeats} training steps (cProfile)", "", "```",
                  r["cprofile"], "```"]
    return "\n".join(lines) + "\n"


def common_parser(description: str) -> argparse.ArgumentParser:
    """The options this script and ``costs.py`` share: the methods, the two batch sizes and the output folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--methods", nargs="+", default=list_methods())
    parser.add_argument("--batch-size", type=int, default=32, help="the demo presets' training batch")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="predict_patterns' batch")
    parser.add_argument("--output-dir", default="benchmarks/results")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="What the steps run in, as the demo's --precision (auto: bf16 autocast where the device "
                             "multiplies bfloat16 natively); bf16 results go to '-bf16' files.")
    return parser


def resolved(args: argparse.Namespace, device: str = "cpu") -> argparse.Namespace:
    """``args`` with ``precision`` resolved ("auto" -> "fp32" or "bf16") for ``device``."""
    args.precision = resolve_precision(args.precision, {"use_cpu": device == "cpu"})
    return args


def output_name(stem: str, args: argparse.Namespace, device: str = "cpu") -> str:
    """``stem``, then ``-cuda`` for a GPU run and ``-bf16`` for a bf16 one (fp32 CPU results keep the plain name)."""
    return stem + ("" if device == "cpu" else f"-{device}") + ("" if args.precision == "fp32" else f"-{args.precision}")


def main() -> int:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = resolved(parser.parse_args())
    work = prepare(DemoSettings(methods=args.methods, progress=False))
    results = {}
    for method in args.methods:
        results[method] = profile_method(method, work, args)
        print(method, {k: round(v, 1) for k, v in results[method]["ms"].items()}, flush=True)
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    name = output_name("profile", args)
    (folder / f"{name}.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    (folder / f"{name}.md").write_text(markdown(results, args), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
