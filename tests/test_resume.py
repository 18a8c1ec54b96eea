"""Kill a training run mid-epoch (SIGKILL, after a checkpoint), resume it, and land on the uninterrupted run.

``tests/scripts/train_tiny.py`` trains 2 epochs of 8 steps and checkpoints every 5 steps; the killed run is
slowed down so the kill lands after checkpoint-5 (step 5 of 8: mid-epoch) and before checkpoint-10. The
resumed run must end on the same adapter weights, bit for bit: on one CPU the same float operations run in
the same order, and the checkpoint restores the optimizer, scheduler and RNG states while Trainer skips the
batches already seen, so there is nothing a tolerance would have to absorb.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "train_tiny.py"
STEPS, SAVE_STEPS = 16, 5
CHECKPOINTS = [f"checkpoint-{s}" for s in (5, 10, 15, 16)]


def _command(output_dir: Path, route: str, method: str, *extra: str) -> list[str]:
    flags = ["--peft-model"] if route == "peft_model" else []
    return [sys.executable, str(SCRIPT), "--output-dir", str(output_dir), "--save-steps", str(SAVE_STEPS),
            "--method", method, *flags, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def _run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


def _run_and_kill_after_first_checkpoint(command: list[str], output_dir: Path) -> None:
    """Start training, wait until checkpoint-5 is complete (trainer_state.json is written last), SIGKILL."""
    process = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = output_dir / "checkpoint-5" / "trainer_state.json"
    deadline = time.monotonic() + 120
    try:
        while not state.exists():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    assert not (output_dir / "checkpoint-10").exists(), "the kill must land between two checkpoints"


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def _assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.parametrize(("route", "method"), [
    ("peft_model", "rep"),  # REP: buffers and gates in the adapter state, gate diagnostics in the logs
    ("injected", "map"),  # AutoModel.from_pretrained(..., adapter=...): Trainer resumes it through a shard index
])
def test_resume_after_sigkill_reaches_the_uninterrupted_weights(route, method, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    _run_and_kill_after_first_checkpoint(_command(resumed, route, method, "--step-sleep", "0.3"), resumed)
    _run(_command(resumed, route, method, "--resume"))
    _run(_command(reference, route, method))

    _assert_same_adapter(_adapter(resumed / "final"), _adapter(reference / "final"))
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == sorted(CHECKPOINTS)
    for name in CHECKPOINTS:
        _assert_same_adapter(_adapter(resumed / name), _adapter(reference / name))
    history = json.loads((resumed / "results.json").read_text())["log_history"]
    train_logs = [h for h in history if "loss" in h]
    assert [h["step"] for h in train_logs] == list(range(1, STEPS + 1)), "each step logged once, none lost"
    expected = [h for h in json.loads((reference / "results.json").read_text())["log_history"] if "loss" in h]
    assert train_logs == expected, "losses, grad norms, learning rates and method diagnostics as if never killed"
    if method == "rep":
        assert all("rep/default/alpha_text" in h for h in train_logs)
    seen = json.loads((resumed / "batches_rank0.json").read_text())
    assert seen == json.loads((reference / "batches_rank0.json").read_text())[SAVE_STEPS:], \
        "the resumed run trains on the batches (samples, missing patterns) the killed run had not committed"
