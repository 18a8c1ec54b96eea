"""A tiny end-to-end training run used by the distributed and resume tests.

The same file runs unchanged as ``python train_tiny.py``, ``torchrun --nproc_per_node 2 train_tiny.py`` and
``accelerate launch train_tiny.py``: Trainer picks the process group up from the environment (gloo on CPU).
It writes, under ``--output-dir``:

* ``batches_rank<r>.json``: per optimizer step, the ``sample_index`` and ``missing_type`` of every sample
  this process trained on (what the missing simulation and the data order produced);
* ``final/``: the trained adapter (``adapter_model.safetensors``), saved by the main process;
* ``results.json`` (main process): ``log_history`` and the final evaluation metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

import hf_missing
from hf_missing import MissingModalityCollator, MissingModalityForClassification, metrics, simulate_missing
from hf_missing.data.synthetic import shapes_dataset, tiny_backbone, tiny_processor
from trainer_callbacks import MethodDiagnosticsCallback


class RecordingCollator(MissingModalityCollator):
    """Remembers which samples, with which missing pattern, each training batch held."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[dict[str, list[int]]] = []
        self.recording = True

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().__call__(features)
        if "labels" in batch and self.recording:
            self.batches.append({"sample_index": [int(f["sample_index"]) for f in features],
                                 "missing_type": batch["missing_type"].tolist()})
        return batch


class SlowDown(TrainerCallback):
    """Sleeps after each step so that a test can kill the run between two checkpoints."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--method", default="map", choices=["map", "rep"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--n-train", type=int, default=64)
    parser.add_argument("--n-test", type=int, default=32)
    parser.add_argument("--save-steps", type=int, default=0, help="0: no checkpoints")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --output-dir")
    parser.add_argument("--step-sleep", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peft-model", action="store_true",
                        help="train a peft.PeftModel (get_peft_model) instead of the wrapper with an injected adapter")
    return parser.parse_args()


def build_model(method: str, seed: int, peft_model: bool) -> torch.nn.Module:
    set_seed(seed)
    model = MissingModalityForClassification.from_backbone(tiny_backbone("clip", seed=seed), num_labels=4)
    options = {"map": {"prompt_length": 4},
               "rep": {"prompt_length": 4, "prompt_depth": 2, "shared_dim": 8, "mlp_reduction": 4}}[method]
    config = hf_missing.get_method_config(method, **options)
    if peft_model:
        return get_peft_model(model, config)
    model.add_adapter(config)
    return model


def build_trainer(args: argparse.Namespace, collator: MissingModalityCollator) -> Trainer:
    data = simulate_missing(shapes_dataset(n_train=args.n_train, n_test=args.n_test, seed=args.seed), rate=0.7,
                            seed=args.seed)
    training_args = TrainingArguments(
        output_dir=args.output_dir, use_cpu=True, report_to="none", seed=args.seed, num_train_epochs=args.epochs,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        learning_rate=1e-2, logging_steps=1, save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500, remove_unused_columns=False, disable_tqdm=True,
        dataloader_num_workers=0,
    )
    model = build_model(args.method, args.seed, args.peft_model)
    return Trainer(model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["test"],
                   data_collator=collator, compute_metrics=metrics.for_task("single_label"),
                   callbacks=[MethodDiagnosticsCallback(), *([SlowDown(args.step_sleep)] if args.step_sleep else [])])


def main() -> None:
    args = parse_args()
    collator = RecordingCollator(tiny_processor("clip"))
    trainer = build_trainer(args, collator)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    collator.recording = False
    results = trainer.evaluate()
    out = Path(args.output_dir)
    rank = int(os.environ.get("RANK", 0))
    (out / f"batches_rank{rank}.json").write_text(json.dumps(collator.batches))
    if trainer.is_world_process_zero():
        trainer.save_model(str(out / "final"))
        (out / "results.json").write_text(json.dumps({"log_history": trainer.state.log_history, "eval": results,
                                                      "world_size": trainer.args.world_size}))


if __name__ == "__main__":
    main()
