"""Per-method training-step and inference costs as ratios measured in one run (issue 19 item 4).

Every method is built as ``hf-missing demo`` builds it (:func:`profile_step.build`: the ``<method>-demo`` preset, the
demo's training split, :func:`~hf_missing.methods.prepare_for_training` done once, so REDEEM's retrieval is
precomputed). One collated training batch and one evaluation batch are then timed, round-robin over the methods
(``--rounds`` rounds, one call per method per round, so that a change in machine load hits every method alike), and
the medians compared:

- ``step / MAP``: forward + backward + AdamW step on the training batch (collation excluded: it is the same for
  every method but REDEEM's neighbour lookup, see ``profile_step.py``) over MAP's. Targets: ≤ 1.3 for every
  prompt-style method, ≤ 1.5 for REDEEM and RAGPT.
- ``extra tokens``: the mean sequence length the method's encoder layers process (read with forward pre-hooks on
  the backbone's own layers) minus the frozen backbone's, on the training and on the evaluation batch.
- ``implied``: the frozen backbone on the same batch with that many extra attended dummy tokens: its training step
  is a forward + backward down to the input embeddings (what prompt tuning must backpropagate, weights frozen), its
  inference an evaluation forward. ``step / implied`` and ``inference / implied`` are what a method costs beyond
  its token count (inference target: ≤ 1.1).

Writes ``<output-dir>/costs.md`` and ``costs.json`` (``--device cuda`` adds ``-cuda``, bf16 ``-bf16`` to the name).
Run: ``python benchmarks/costs.py [--methods ...] [--rounds 7] [--device cpu|cuda] [--precision auto|fp32|bf16]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from profile_step import build, common_parser, evaluation_samples, output_name, resolved, samples

from hf_missing.demo import DemoSettings, prepare
from hf_missing.precision import autocast

REFERENCE = "map"
PROMPT_TARGET, RETRIEVAL_TARGET, INFERENCE_TARGET = 1.3, 1.5, 1.1
RETRIEVAL_METHODS = ("redeem", "ragpt")
NOT_PROMPT = ("baseline", "lora")  # no extra tokens: no step target against MAP
BACKBONE_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")


def on(batch: dict[str, Any], device: str) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def timed(action: Callable[[], Any], device: str) -> float:
    """Wall milliseconds of one call (device work included)."""
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    action()
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


def layer_lengths(model: Any) -> tuple[list[int], list[Any]]:
    """(lengths, hook handles): the sequence length of every encoder-layer call from now on, read by forward
    pre-hooks on the backbone's own layers (inside a method's layer wrapper), so they see the tokens the method
    inserted."""
    seen: list[int] = []

    def record(module: Any, args: tuple, kwargs: dict) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.shape[1])

    interface = model.interface
    layers = [getattr(layer, "base_layer", layer)  # inside a method's wrapper: after its insertions
              for stream in interface.streams for layer in interface.layers(stream.name)]
    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in layers]
    return seen, handles


class Case:
    """One method's model and batches, and its step / inference calls."""

    def __init__(self, method: str, work: Any, args: argparse.Namespace) -> None:
        self.method, self.precision, self.device = method, args.precision, args.device
        run = build(method, work)
        self.model, self.optimizer = run.model.to(args.device), run.trainer.optimizer
        self.train_batch = on(run.collator(samples(run.train, args.batch_size)), args.device)
        self.eval_batch = on(run.collator(evaluation_samples(run, work, args.eval_batch_size)), args.device)
        self.eval_batch.pop("labels", None)
        self.times: dict[str, list[float]] = {"step": [], "inference": []}

    def step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad()
        with autocast(self.precision, self.device):
            loss = self.model(**self.train_batch).loss
        loss.backward()
        self.optimizer.step()

    def infer(self) -> None:
        self.model.eval()
        with torch.no_grad(), autocast(self.precision, self.device):
            self.model(**self.eval_batch)

    def mean_lengths(self) -> dict[str, float]:
        """Mean sequence length over the encoder-layer calls of one training and one evaluation forward."""
        out = {}
        for kind, run in (("step", self.step), ("inference", self.infer)):
            seen, handles = layer_lengths(self.model)
            run()
            for handle in handles:
                handle.remove()
            out[kind] = statistics.fmean(seen)
        return out


class Floor:
    """The frozen backbone with ``extra`` dummy tokens: the cost a method's extra tokens alone imply. ``step``:
    forward + backward in training mode with the gradient flowing through every layer to the input embeddings
    (what prompt tuning backpropagates, the weights frozen); ``inference``: an evaluation forward."""

    def __init__(self, backbone: Any, train_batch: dict[str, Any], eval_batch: dict[str, Any],
                 extra: dict[str, int], precision: str) -> None:
        self.backbone, self.extra, self.precision = backbone, extra, precision
        self.device = next(backbone.parameters()).device.type
        self.train_batch, self.eval_batch = padded(train_batch, extra["step"]), padded(eval_batch, extra["inference"])
        self.times: dict[str, list[float]] = {"step": [], "inference": []}

    def step(self) -> None:
        self.backbone.train()
        handle = self.backbone.embeddings.register_forward_hook(_inputs_need_grad)
        try:
            with autocast(self.precision, self.device):
                total = self.backbone(**self.train_batch).pooler_output.float().sum()
            total.backward()
        finally:
            handle.remove()

    def infer(self) -> None:
        self.backbone.eval()
        with torch.no_grad(), autocast(self.precision, self.device):
            self.backbone(**self.eval_batch)


def _inputs_need_grad(module: Any, args: tuple, output: tuple) -> tuple:
    """Forward hook on the backbone's embeddings: the joint embeddings become a leaf that needs a gradient."""
    embeddings, mask = output
    return embeddings.detach().requires_grad_(), mask


def padded(batch: dict[str, Any], extra: int) -> dict[str, Any]:
    """The frozen backbone's own inputs from ``batch`` (text and pixels; the wrapper's missing-type checks and head
    are left out), with ``extra`` attended dummy text tokens appended to every sample: the backbone then processes
    ``extra`` more tokens in every layer."""
    out = {k: batch[k] for k in BACKBONE_INPUTS if k in batch}
    ids = out["input_ids"]
    if extra <= 0:
        return out
    out["input_ids"] = torch.cat([ids, ids[:, -1:].expand(-1, extra)], dim=1)
    for key in ("attention_mask", "token_type_ids"):
        if key in batch:
            fill = torch.ones_like if key == "attention_mask" else torch.zeros_like
            out[key] = torch.cat([out[key], fill(ids[:, :1]).expand(-1, extra)], dim=1)
    return out


def measure(timed_objects: list[Any], rounds: int, device: str) -> None:
    """Round-robin timing of every method's and every floor's step and inference (one call each per round)."""
    for _ in range(rounds):
        for item in timed_objects:
            item.times["step"].append(timed(item.step, device))
            item.times["inference"].append(timed(item.infer, device))


def summary(cases: dict[str, Case], floors: dict[str, Floor]) -> dict[str, dict[str, float]]:
    median = statistics.median
    ref = median(cases[REFERENCE].times["step"]) if REFERENCE in cases else float("nan")
    out = {}
    for name, case in cases.items():
        floor = floors[name]
        row = {"step_ms": median(case.times["step"]), "inference_ms": median(case.times["inference"]),
               "extra_tokens_step": floor.extra["step"], "extra_tokens_inference": floor.extra["inference"],
               "implied_step_ms": median(floor.times["step"]), "implied_inference_ms": median(floor.times["inference"])}
        row["step_vs_map"] = row["step_ms"] / ref
        row["step_vs_implied"] = row["step_ms"] / row["implied_step_ms"]
        row["inference_vs_implied"] = row["inference_ms"] / row["implied_inference_ms"]
        out[name] = row
    return out


def target(name: str) -> str:
    if name in RETRIEVAL_METHODS:
        return f"≤ {RETRIEVAL_TARGET}"
    return "" if name in NOT_PROMPT or name == REFERENCE else f"≤ {PROMPT_TARGET}"


def markdown(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    lines = ["# Training-step and inference cost ratios (embedded default)", "",
             f"`python benchmarks/costs.py --rounds {args.rounds} --device {args.device} --precision "
             f"{args.precision}`: medians over "
             f"{args.rounds} round-robin rounds on {torch.get_num_threads()} threads; training batch "
             f"{args.batch_size}, evaluation batch {args.eval_batch_size}. 'extra tokens' (training / evaluation "
             "batch): mean over encoder-layer calls of the tokens the method adds; 'implied': the frozen backbone "
             "(without the wrapper and head) with that many dummy tokens added, its training step a forward + "
             "backward to the input embeddings (the prompt-tuning floor), its inference an evaluation forward.", "",
             "| method | step ms | step / MAP | target | extra tokens | implied step ms | step / implied | "
             "inference ms | implied inference ms | inference / implied | target |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['step_ms']:.1f} | {r['step_vs_map']:.2f} | {target(name)} | "
                     f"{r['extra_tokens_step']} / {r['extra_tokens_inference']} | {r['implied_step_ms']:.1f} | "
                     f"{r['step_vs_implied']:.2f} | {r['inference_ms']:.1f} | {r['implied_inference_ms']:.1f} | "
                     f"{r['inference_vs_implied']:.2f} | ≤ {INFERENCE_TARGET} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    args = resolved(args, args.device)
    methods = list(dict.fromkeys(["baseline", *args.methods]))  # the floors run on the frozen backbone
    work = prepare(DemoSettings(methods=methods, progress=False))
    cases = {m: Case(m, work, args) for m in methods}
    base = cases["baseline"]
    base_lengths = base.mean_lengths()
    floors = {}
    for name, case in cases.items():
        extra = {k: round(v - base_lengths[k]) for k, v in case.mean_lengths().items()}
        floors[name] = Floor(base.model.backbone, base.train_batch, base.eval_batch, extra, args.precision)
    timed_objects = [*cases.values(), *floors.values()]
    measure(timed_objects, 1, args.device)  # warm-up
    for item in timed_objects:
        item.times = {"step": [], "inference": []}
    measure(timed_objects, args.rounds, args.device)
    rows = summary(cases, floors)
    name = output_name("costs", args, args.device)
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2),
                                         encoding="utf-8")
    (folder / f"{name}.md").write_text(markdown(rows, args), encoding="utf-8")
    print(markdown(rows, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
