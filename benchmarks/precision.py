"""What bf16 autocast buys each method's training step and evaluation batch, measured in one run (the demo's
``--precision auto`` choice, :mod:`hf_missing.precision`).

Every method is built as the demo builds it (``costs.Case``: its demo preset, the training split with 70% "both"
missing, prepared once). Its training step (forward under autocast, backward, AdamW) and evaluation forward are
timed in fp32 and in bf16, round-robin over methods and precisions (``--rounds`` rounds), and the medians compared:
``fp32 / bf16`` is the speed-up. On a CPU without native bf16 the ratio falls below 1 (emulated products), which is
why ``auto`` chooses bf16 only where :func:`hf_missing.precision.native_bf16` holds.

Writes ``<output-dir>/precision.md`` and ``precision.json``.
Run: ``python benchmarks/precision.py [--methods ...] [--rounds 5]``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import torch
from costs import Case, timed
from profile_step import common_parser

from hf_missing.demo import DemoSettings, prepare
from hf_missing.precision import native_bf16

PRECISIONS = ("fp32", "bf16")


def measure(cases: dict[str, Case], rounds: int) -> dict[str, dict[str, list[float]]]:
    """ms per call: method -> "<kind> <precision>" -> one time per round (one warm-up round first, not kept)."""
    times: dict[str, dict[str, list[float]]] = {m: {} for m in cases}
    for round_ in range(rounds + 1):
        for name, case in cases.items():
            for precision in PRECISIONS:
                case.precision = precision
                for kind, action in (("step", case.step), ("inference", case.infer)):
                    ms = timed(action, "cpu")
                    if round_:
                        times[name].setdefault(f"{kind} {precision}", []).append(ms)
    return times


def markdown(rows: dict[str, dict[str, float]], rounds: int) -> str:
    lines = ["# fp32 and bf16 autocast, per method (embedded default)", "",
             f"`python benchmarks/precision.py --rounds {rounds}`: medians over {rounds} round-robin rounds on "
             f"{torch.get_num_threads()} threads (this CPU multiplies bfloat16 natively: {native_bf16(True)}); "
             "training batch 32 (step: forward, backward, AdamW), evaluation batch 64.", "",
             "| method | step fp32 ms | step bf16 ms | step fp32 / bf16 | inference fp32 ms | inference bf16 ms | "
             "inference fp32 / bf16 |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['step fp32']:.1f} | {r['step bf16']:.1f} | {r['step speed-up']:.2f} | "
                     f"{r['inference fp32']:.1f} | {r['inference bf16']:.1f} | {r['inference speed-up']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = common_parser(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    args.device = "cpu"
    work = prepare(DemoSettings(methods=args.methods, progress=False))
    cases = {m: Case(m, work, args) for m in args.methods}
    rows = {}
    for name, series in measure(cases, args.rounds).items():
        row = {key: statistics.median(values) for key, values in series.items()}
        for kind in ("step", "inference"):
            row[f"{kind} speed-up"] = row[f"{kind} fp32"] / row[f"{kind} bf16"]
        rows[name] = row
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "precision.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2),
                                           encoding="utf-8")
    (folder / "precision.md").write_text(markdown(rows, args.rounds), encoding="utf-8")
    print(markdown(rows, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
