"""Did a change of settings move a method's accuracy? Two demo or benchmark output folders, compared method by method.

Each folder's ``runs.json`` holds, per method and training seed, which test items each run got right (with nothing
missing and at 70% test missing under each pattern). For every method and seed found in both folders, the new run
is compared with the old one on the same seeds and test items (:func:`hf_missing.significance.compare`: the mean
difference over seeds with its Student-t interval, a paired bootstrap over test items, ``*`` where both exclude 0 on
the same side). Used for the demo's speed trades (bf16 autocast, 2 epochs) against the fp32, 3-epoch table.

Run: ``python benchmarks/compare_runs.py NEW_FOLDER OLD_FOLDER [--pattern both] [--output FILE.md]``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hf_missing.significance import compare


def seed_runs(folder: Path, pattern: str) -> dict[str, dict[int, dict[str, list[int]]]]:
    """method -> seed -> condition -> per-item correctness, for the runs trained under ``pattern``."""
    runs = json.loads((folder / "runs.json").read_text(encoding="utf-8"))
    out: dict[str, dict[int, dict[str, list[int]]]] = defaultdict(dict)
    for key, run in runs.items():
        method, trained, seed = (part.strip() for part in key.split("|"))
        if trained == pattern:
            out[method][int(seed.removeprefix("seed "))] = run["correct"]
    return out


def settings_of(folder: Path) -> dict[str, Any]:
    runs = json.loads((folder / "runs.json").read_text(encoding="utf-8"))
    first = next(iter(runs.values()))["settings"]
    return {k: first.get(k) for k in ("epochs", "precision", "backbone", "train_limit", "test_limit")}


def table(new: dict[str, dict[int, dict[str, list[int]]]], old: dict[str, dict[int, dict[str, list[int]]]]) -> str:
    methods = [m for m in new if m in old]
    conditions = list(next(iter(new[methods[0]].values())))
    lines = ["| method | seeds | " + " | ".join(conditions) + " |", "|---|---|" + "---|" * len(conditions)]
    for method in methods:
        seeds = sorted(set(new[method]) & set(old[method]))
        cells = [compare(np.array([new[method][s][c] for s in seeds]),
                         np.array([old[method][s][c] for s in seeds])).cell() for c in conditions]
        lines.append(f"| {method} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", type=Path)
    parser.add_argument("old", type=Path)
    parser.add_argument("--pattern", default="both", help="The training pattern whose runs are compared.")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    text = "\n".join([
        f"# {args.new} minus {args.old} (accuracy points, trained with '{args.pattern}' missing)", "",
        f"`python benchmarks/compare_runs.py {args.new} {args.old} --pattern {args.pattern}`. New settings: "
        f"{settings_of(args.new)}; old: {settings_of(args.old)} (an unset precision is fp32: runs stored before "
        "the precision switch). Each cell: mean difference over seeds ± its 95% Student-t half-width [95% paired "
        "bootstrap over test items]; * where both exclude 0 on the same side. Columns: nothing missing, and 70% "
        "test missing under each pattern.", "", table(seed_runs(args.new, args.pattern),
                                                        seed_runs(args.old, args.pattern)), ""])
    if args.output:
        args.output.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
