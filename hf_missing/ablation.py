"""Ablations as runs: ``hf-missing benchmark --ablation rep`` trains each row of a paper's ablation tables on the
embedded default over several seeds and reports mean ± 95% confidence interval next to the paper's numbers.

Every run trains with the settings' missing rate and pattern (default 70% "both": half no text, half no image) and
is evaluated on the test split with 70% missing text, 70% missing image and 70% "both" (the paper's three columns at
eta = 70%; the paper trains and tests each column under its own setting). Runs are written to ``runs.json`` as they
finish, each with the settings it ran under, so an interrupted ablation resumes where it stopped and a stored run of
other settings is refused rather than mixed in.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .demo import DemoSettings, Workspace, precision_setting, prepare, run_precision, train_and_evaluate
from .runstore import RunStore
from .significance import mean_interval

COLUMNS = ("text", "image", "both")  # test pattern at 70%: the paper's text-missing, image-missing, both-missing
RATE = 0.7


@dataclass(frozen=True)
class AblationRow:
    """One row: the method and options it trains, the paper's numbers (text, image, both at eta = 70%) and the
    row it is compared with (``than``: expected better than that row; ``below``: worse). The expectation is the
    paper's when the row has paper numbers, else this library's (e.g. feature buffers at least as good as the
    released chain)."""

    name: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    paper: tuple[float, float, float] | None = None
    than: str | None = None
    below: str | None = None


FULL = "+ Replay (full REP)"
REP_ROWS = (
    AblationRow("frozen backbone + head (no buffers)", "baseline"),
    AblationRow("Baseline: private prompts, random init, layer 0", "rep",
                {"dynamic_init": False, "dual_buffers": False, "replay": False}, (70.42, 78.00, 73.02)),
    AblationRow("+ Dynamic initialisation", "rep", {"dual_buffers": False, "replay": False}, (73.11, 80.42, 75.48),
                than="Baseline: private prompts, random init, layer 0"),
    AblationRow("+ Dual buffers", "rep", {"replay": False}, (76.84, 83.91, 78.91), than="+ Dynamic initialisation"),
    AblationRow(FULL, "rep", {}, (80.40, 87.32, 82.68), than="+ Dual buffers"),
    AblationRow("w/o private buffer", "rep", {"use_private_buffer": False}, (78.74, 85.92, 81.05), below=FULL),
    AblationRow("w/o shared buffer", "rep", {"dual_buffers": False}, below=FULL),
    AblationRow("Gaussian -> uniform noise", "rep", {"noise_type": "uniform"}, (79.11, 85.36, 81.08), below=FULL),
    AblationRow("Gaussian -> Laplace noise", "rep", {"noise_type": "laplace"}, (78.85, 85.92, 81.14), below=FULL),
    AblationRow("released chain (buffer_source='parameters')", "rep", {"buffer_source": "parameters"}, below=FULL),
    AblationRow("E_m from the sample (init_source='sample')", "rep", {"init_source": "sample"}),
    AblationRow("longer, deeper buffers (l = 12, d = 6; not a paper row)", "rep",
                {"prompt_length": 12, "prompt_depth": 6}, than="frozen backbone + head (no buffers)"),
)
ABLATIONS = {"rep": REP_ROWS}


def run_ablation(settings: DemoSettings, method: str = "rep",
                 rows: Sequence[AblationRow] | None = None) -> list[dict[str, Any]]:
    """Train every row of ``method``'s ablation (or ``rows``) for every seed, resuming from ``runs.json``, and
    write ``ablation.md`` / ``ablation.json`` into ``settings.output_dir``."""
    if method not in ABLATIONS:
        raise ValueError(f"No ablation for {method!r}; known: {sorted(ABLATIONS)}.")
    rows = ABLATIONS[method] if rows is None else rows
    folder = Path(settings.output_dir)
    store = RunStore(folder / "runs.json")
    work = prepare(settings)
    backbone = Path(work.backbone_dir).name
    todo = [(row, seed) for row in rows for seed in settings.seeds
            if store.get(_key(row, seed), run_settings(settings, row, backbone, work)) is None]
    for row, seed in todo:
        row_settings = replace(settings, method_options={row.method: row.options})
        result = train_and_evaluate(row.method, work, row_settings, seed, settings.train_pattern)
        store.put(_key(row, seed), run_summary(result), run_settings(settings, row, backbone, work))
    table = summarise_rows(rows, store.runs, settings.seeds)
    atomic_write_text(folder / "ablation.json", json.dumps(table, indent=2))
    atomic_write_text(folder / "ablation.md", markdown(table, settings))
    return table


def _key(row: AblationRow, seed: int) -> str:
    return f"{row.name} | seed {seed}"


def run_settings(settings: DemoSettings, row: AblationRow, backbone: str, work: Workspace) -> dict[str, Any]:
    """What a stored run must share with the current ablation to be reused: the row, the training settings (the
    precision included) and the stage-1 checkpoint (its folder name carries the hash of the data and settings it was
    aligned on)."""
    return {"method": row.method, "options": row.options, "epochs": settings.epochs, "rate": settings.train_rate,
            "pattern": settings.train_pattern, "train_limit": settings.train_limit, "test_limit": settings.test_limit,
            "backbone": backbone, **precision_setting(run_precision(row.method, work, settings))}


def run_summary(result: dict[str, Any]) -> dict[str, Any]:
    """What the table needs from one run: accuracy at 70% of each column, the gates, whether it collapsed."""
    at = {c: next(p["accuracy"] for p in result["curves"][c] if abs(p["rate"] - RATE) < 1e-9) for c in COLUMNS}
    return {"accuracy": at, "complete": result["per_pattern"]["complete"]["accuracy"],
            "gates": result["gates"], "collapsed": result["collapsed"], "train_loss": result["train_loss"]}


def summarise_rows(rows: Sequence[AblationRow], runs: dict[str, dict[str, Any]],
                   seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Per row: mean ± 95% CI per column (in %), collapsed seeds, the paper's numbers and whether the row moves
    as expected against the row it is compared with (both-missing column, paired over seeds)."""
    out = []
    for row in rows:
        done = {s: runs[_key(row, s)] for s in seeds if _key(row, s) in runs}
        cells = {c: mean_interval([100 * r["accuracy"][c] for r in done.values()]) for c in COLUMNS} if done else {}
        out.append({"row": row.name, "method": row.method, "options": row.options, "seeds": len(done),
                    "collapsed": sum(r["collapsed"] for r in done.values()), "cells": cells, "paper": row.paper,
                    "than": row.than, "below": row.below,
                    "both": {s: 100 * r["accuracy"]["both"] for s, r in done.items()}})
    by_name = {r["row"]: r for r in out}
    for r in out:
        r["direction"] = _direction(r, by_name)
    return out


def _direction(row: dict[str, Any], rows: dict[str, dict[str, Any]]) -> str:
    """Against the row it is compared with, on the both-missing column: the per-seed paired difference's mean and
    95% interval, and 'yes' (the interval lies on the expected side of 0), 'no' (on the other side) or 'unclear'."""
    other = rows.get(row["than"] or row["below"] or "")
    seeds = sorted(set(row["both"]) & set(other["both"])) if other else []
    if not seeds:
        return ""
    diff, half = mean_interval([row["both"][s] - other["both"][s] for s in seeds])
    sign = 1 if row["than"] else -1
    verdict = "unclear" if len(seeds) < 2 or abs(diff) <= half else ("yes" if sign * diff > 0 else "no")
    source = "paper" if row["paper"] else "expected"
    return f"{source}: {'>' if sign > 0 else '<'} '{other['row']}': {verdict} ({diff:+.1f} ± {half:.1f})"


def _cell(mean: float, half: float, seeds: int) -> str:
    return f"{mean:.1f} ± {half:.1f}" if seeds > 1 else f"{mean:.1f} (1 seed)"


def markdown(table: list[dict[str, Any]], settings: DemoSettings) -> str:
    lines = ["| row | text-missing 70% | image-missing 70% | both 70% | paper (text / image / both) | "
             "direction on both 70% (paired difference) | collapsed seeds |", "|---|---|---|---|---|---|---|"]
    for r in table:
        cells = [_cell(*r["cells"][c], r["seeds"]) if r["cells"] else "not run" for c in COLUMNS]
        paper = " / ".join(f"{v:.2f}" for v in r["paper"]) if r["paper"] else "-"
        lines.append(f"| {r['row']} | {' | '.join(cells)} | {paper} | {r['direction'] or '-'} | "
                     f"{r['collapsed']}/{r['seeds']} |")
    header = (f"Accuracy (%) on the embedded default's test split, mean ± 95% t-interval over seeds "
              f"{list(settings.seeds)}; trained with {100 * settings.train_rate:.0f}% '{settings.train_pattern}' "
              f"missing, {settings.epochs or 'the preset'} epochs.")
    return "\n".join([header, "", *lines, ""])
