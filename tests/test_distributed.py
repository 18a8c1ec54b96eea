"""The same training script under ``torchrun --nproc_per_node 2`` and ``accelerate launch --multi_gpu
--num_processes 2`` (``--multi_gpu`` is accelerate's switch to multi-process DDP; the script sets ``use_cpu``,
so both run on CPU with gloo) and in one process.

One process trains with batch 16; two processes with batch 8 each. Trainer's sampler draws the same
permutation in both runs (seeded), and accelerate hands process r the r-th slice of 8 of every 16, so
every optimizer step sees the same 16 samples with the same missing patterns. The averaged DDP gradient
then equals the one-process gradient up to float32 summation order (two means of 8 averaged by the gloo
all-reduce vs. one mean of 16): trained weights agree to ~3e-6 here, hence atol 1e-5 on adapters of
magnitude ~1, rtol 1e-5 on the logged losses, and identical evaluation counts and accuracy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments

from tests.conftest import make_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "train_tiny.py"
TORCHRUN = Path(sys.executable).with_name("torchrun")
ACCELERATE = Path(sys.executable).with_name("accelerate")
LAUNCHERS = {"torchrun": [str(TORCHRUN), "--standalone", "--nproc_per_node", "2"],
             "accelerate": [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]}


def _run(launcher: list[str], output_dir: Path, batch_size: int) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [*launcher, str(SCRIPT), "--output-dir", str(output_dir), "--batch-size", str(batch_size)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("distributed")
    _run([sys.executable], folder / "single", batch_size=16)
    for name, launcher in LAUNCHERS.items():
        _run(launcher, folder / name, batch_size=8)
    return {"single": folder / "single", **{name: folder / name for name in LAUNCHERS}}


def _batches(folder: Path, rank: int) -> list[dict]:
    return json.loads((folder / f"batches_rank{rank}.json").read_text())


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_processes_train_on_the_same_samples_and_missing_patterns(runs, launcher):
    single, ranks = _batches(runs["single"], 0), [_batches(runs[launcher], r) for r in (0, 1)]
    assert _results(runs[launcher])["world_size"] == 2 and _results(runs["single"])["world_size"] == 1
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 8  # 64 samples, 2 epochs, 16 per step
    for step, batch in enumerate(single):
        for key in ("sample_index", "missing_type"):
            assert ranks[0][step][key] + ranks[1][step][key] == batch[key], (step, key)
    assert (runs[launcher] / "final" / "adapter_model.safetensors").exists()
    evaluated = [_results(runs[name])["eval"] for name in ("single", launcher)]
    counts = [{k: v for k, v in e.items() if k.endswith("/count")} for e in evaluated]
    assert counts[0] == counts[1] and sum(counts[0].values()) == 32  # the whole test split, no padding duplicates


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_processes_reach_the_one_process_weights_and_metrics(runs, launcher):
    single, ddp = (load_file(runs[name] / "final" / "adapter_model.safetensors") for name in ("single", launcher))
    assert single.keys() == ddp.keys()
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], atol=1e-5, rtol=0, msg=key)
    losses = [[h["loss"] for h in _results(runs[name])["log_history"] if "loss" in h] for name in ("single", launcher)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    evaluated = [_results(runs[name])["eval"] for name in ("single", launcher)]
    assert evaluated[1]["eval_accuracy"] == evaluated[0]["eval_accuracy"]
    assert evaluated[1]["eval_loss"] == pytest.approx(evaluated[0]["eval_loss"], rel=1e-5)


def test_trainer_does_not_hand_loss_kwargs_to_the_wrapper(tmp_path):
    """forward takes **kwargs; without ``accepts_loss_kwargs = False`` Trainer would think the model consumes
    ``num_items_in_batch``, multiply the (already averaged) loss by the number of processes and skip the
    gradient-accumulation division."""
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert Trainer(model=make_model("clip", "map"), args=args).model_accepts_loss_kwargs is False
