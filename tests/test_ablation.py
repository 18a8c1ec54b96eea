"""The ablation runner (``hf-missing benchmark --ablation rep``): statistics, resume, settings checks, the table.
Training is replaced by a stub that returns fixed accuracies, so these tests check the bookkeeping only."""

import json
from types import SimpleNamespace

import pytest

from hf_missing import ablation
from hf_missing.ablation import REP_ROWS, AblationRow, run_ablation, summarise_rows
from hf_missing.demo import DemoSettings, demo_task

ROWS = (AblationRow("full", "rep", {}), AblationRow("chain", "rep", {"buffer_source": "parameters"}, below="full"),
        AblationRow("worse", "rep", {"replay": False}, (1.0, 2.0, 3.0), below="full"))


def _run(both: float) -> dict:
    return {"accuracy": {"text": 0.5, "image": 0.6, "both": both}, "collapsed": both < 0.3}


def test_direction_is_a_paired_interval_over_seeds():
    """A row is said to move as expected only when the per-seed paired difference's 95% interval excludes 0 on
    the expected side; catches a verdict from the means alone (a tie or a noisy gap called 'yes')."""
    runs = {f"{name} | seed {s}": _run(both) for name, values in
            {"full": (0.80, 0.82, 0.81), "chain": (0.70, 0.71, 0.72), "worse": (0.79, 0.84, 0.80)}.items()
            for s, both in enumerate(values)}
    table = {r["row"]: r for r in summarise_rows(ROWS, runs, [0, 1, 2])}
    assert table["chain"]["direction"].startswith("expected: < 'full': yes (-10.0")
    assert table["worse"]["direction"].startswith("paper: < 'full': unclear")
    assert table["full"]["direction"] == "" and table["full"]["cells"]["both"][0] == pytest.approx(81.0)


def test_runs_resume_and_other_settings_are_refused(tmp_path, monkeypatch):
    """An interrupted ablation resumes without retraining stored runs, and a stored run of other settings (other
    epochs, or another stage-1 checkpoint of the backbone) is an error naming the file instead of being mixed into
    the table."""
    trained = []

    def fake_train(method, work, settings, seed, pattern):
        trained.append((method, settings.method_options[method].get("buffer_source"), seed))
        return {"curves": {c: [{"rate": 0.7, "accuracy": 0.5 + seed / 10}] for c in ("text", "image", "both")},
                "per_pattern": {"complete": {"accuracy": 0.9}}, "gates": {}, "collapsed": False, "train_loss": 1.0}

    backbone = {"dir": "fused-aligned-aaaa"}
    monkeypatch.setattr(ablation, "prepare",
                        lambda settings: SimpleNamespace(backbone_dir=backbone["dir"], task=demo_task("emoji")))
    monkeypatch.setattr(ablation, "train_and_evaluate", fake_train)
    settings = DemoSettings(output_dir=str(tmp_path), seeds=[0, 1], epochs=1)
    run_ablation(settings, "rep", ROWS[:2])
    assert len(trained) == 4
    run_ablation(settings, "rep", ROWS[:2])
    assert len(trained) == 4
    text = (tmp_path / "ablation.md").read_text()
    assert "| full | 55.0 ± 63.5 |" in text and "1 epochs" in text
    assert json.loads((tmp_path / "runs.json").read_text())["full | seed 0"]["settings"]["epochs"] == 1
    with pytest.raises(ValueError, match=r"runs.json holds 'full \| seed 0' trained under .*another --output-dir"):
        run_ablation(DemoSettings(output_dir=str(tmp_path), seeds=[0], epochs=2), "rep", ROWS[:1])
    backbone["dir"] = "fused-aligned-bbbb"
    with pytest.raises(ValueError, match=r"fused-aligned-aaaa.*stage-1 checkpoints"):
        run_ablation(settings, "rep", ROWS[:1])


def test_rep_rows_are_the_papers_tables_and_each_names_a_known_comparison():
    """Every row of Tables 3-4 is present with the paper's numbers, and every comparison names an existing row."""
    names = {r.name for r in REP_ROWS}
    assert {r.paper for r in REP_ROWS if r.paper} >= {(70.42, 78.00, 73.02), (80.40, 87.32, 82.68),
                                                       (78.74, 85.92, 81.05), (79.11, 85.36, 81.08)}
    assert all((r.than or r.below or next(iter(names))) in names for r in REP_ROWS)
