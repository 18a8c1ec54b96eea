"""The mutation-testing report of ``make mutation``: benchmarks/results/mutation.md and mutation.json.

Reads mutmut 3's result files (``mutants/<path>.meta``, one per mutated source file, left by ``mutmut run``) and
counts, per file, the mutants killed, survived, timed out, without tests and not yet checked. Every surviving
mutant is listed with its diff (``mutmut show``) and the reason from ``benchmarks/mutation_notes.json``: either a
mutant that is equivalent (no observable change; left out of the score's denominator), one accepted as it is, or
the test added to kill it (such a mutant is listed with its status after the rerun, killed once the test works).

    score = (killed + timeout) / (checked - equivalent)

A timeout is a detected mutant (an endless loop or a crash of the test process), as in mutmut's own badge. Run from
the repository root after ``mutmut run``: ``python benchmarks/mutation_report.py``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

MUTANTS = Path("mutants")
NOTES = Path("benchmarks/mutation_notes.json")
RUNS = Path("benchmarks/mutation_runs.md")  # hand-written: which runs produced the results, their scope and time
OUT = Path("benchmarks/results/mutation")
# mutmut.stats.status_by_exit_code, folded into the columns of the report.
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          37: "killed", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}
COLUMNS = ("killed", "survived", "timeout", "no tests", "not checked", "other")


@dataclass
class FileReport:
    """The counts of one mutated source file and its surviving mutants."""

    path: str
    counts: dict[str, int]
    equivalent: int = 0
    score: float | None = None
    mutant_s: float = 0.0
    survivors: list[dict[str, str]] = field(default_factory=list)


def status_of(exit_code: int | None) -> str:
    """The report column of a mutmut exit code (segfaults and the like fall under "other")."""
    return STATUS.get(exit_code, "other")


def load_meta(meta: Path) -> tuple[dict[str, int | None], float]:
    """The exit code of every mutant of one ``.meta`` file, and the seconds its checked mutants took together."""
    data = json.loads(meta.read_text())
    return data["exit_code_by_key"], sum(data.get("durations_by_key", {}).values())


def mutant_diff(name: str, path: str) -> str:
    """The diff of one mutant, as ``mutmut show`` prints it: read in this process with mutmut 3.8.1's own function
    (one ``mutmut show`` process per mutant is slow), else from ``mutmut show``."""
    try:
        from mutmut.mutation.diff_apply import get_diff_for_mutant
    except ImportError:
        shown = subprocess.run([sys.executable, "-m", "mutmut", "show", name], capture_output=True, text=True,
                               check=False)
        return "\n".join(shown.stdout.splitlines()[1:]).strip() or shown.stderr.strip()
    return get_diff_for_mutant(name, path=path).strip()


def score(counts: Counter[str], equivalent: int) -> float | None:
    """``(killed + timeout) / (checked - equivalent)``; None while nothing was checked."""
    checked = sum(counts.values()) - counts["not checked"] - equivalent
    return (counts["killed"] + counts["timeout"]) / checked if checked > 0 else None


def file_report(meta: Path, notes: dict[str, dict[str, str]], diffs: bool) -> FileReport:
    """Counts, score and surviving mutants of one mutated file."""
    codes, seconds = load_meta(meta)
    path = str(meta.relative_to(MUTANTS))[: -len(".meta")]
    counts = Counter(status_of(code) for code in codes.values())
    survivors = [name for name, code in sorted(codes.items())
                 if status_of(code) in ("survived", "no tests", "other") or name in notes]
    equivalent = sum(notes.get(name, {}).get("kind") == "equivalent" and status_of(codes[name]) == "survived"
                     for name in survivors)
    listed = [{"mutant": name, "status": status_of(codes[name]), **notes.get(name, {"kind": "", "reason": ""}),
               "diff": mutant_diff(name, path) if diffs else ""} for name in survivors]
    return FileReport(path, {column: counts[column] for column in COLUMNS}, equivalent, score(counts, equivalent),
                      round(seconds, 1), listed)


def markdown(reports: list[FileReport]) -> str:
    """The report as Markdown: a table of scores, then each surviving mutant with its diff and reason."""
    lines = ["# Mutation testing (mutmut 3.8.1, `make mutation`)", "",
             "Score = (killed + timeout) / (checked − equivalent); the notes are in benchmarks/mutation_notes.json.",
             "Mutant runs: the seconds mutmut's forked test runs of the file's checked mutants took together.",
             "", "| file | total | " + " | ".join(COLUMNS) + " | equivalent | score | mutant runs (s) |",
             "|---" * (len(COLUMNS) + 5) + "|"]
    for r in reports:
        cells = [str(r.counts[c]) for c in COLUMNS]
        shown = "not run" if r.score is None else f"{r.score:.1%}"
        lines.append(f"| {r.path} | {sum(r.counts.values())} | " + " | ".join(cells)
                     + f" | {r.equivalent} | {shown} | {r.mutant_s:.0f} |")
    if RUNS.exists():
        lines += ["", RUNS.read_text().strip()]
    for r in reports:
        if not r.survivors:
            continue
        lines += ["", f"## {r.path}: mutants that survived the first run", ""]
        for s in r.survivors:
            reason = f"**{s['kind']}**: {s['reason']}" if s["kind"] else "**not yet examined**"
            lines += [f"### `{s['mutant']}` ({s['status']})", "", reason, "", "```diff", s["diff"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    """Write benchmarks/results/mutation.md and .json from the result files in mutants/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-diffs", action="store_true", help="skip `mutmut show` (fast)")
    args = parser.parse_args()
    notes = json.loads(NOTES.read_text()) if NOTES.exists() else {}
    reports = [file_report(meta, notes, not args.no_diffs) for meta in sorted(MUTANTS.rglob("*.py.meta"))]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".md").write_text(markdown(reports))
    OUT.with_suffix(".json").write_text(json.dumps([asdict(r) for r in reports], indent=2) + "\n")
    for r in reports:
        print(r.path, r.counts, "not run" if r.score is None else f"{r.score:.1%}")


if __name__ == "__main__":
    main()
