"""Write the adapter's model card (README.md) with the run's last evaluation results when training ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_missing.hub import ADAPTER_CONFIG_NAME, adapter_card

from .diagnostics import find_diagnostics_model


def last_eval_results(log_history: list[dict[str, Any]]) -> dict[str, float]:
    """The ``eval_*`` metrics of the last evaluation in ``TrainerState.log_history`` (empty if none ran)."""
    for entry in reversed(log_history):
        results = {k: v for k, v in entry.items() if k.startswith("eval_")}
        if results:
            return results
    return {}


class ModelCardCallback(TrainerCallback):
    """At the end of training, on the main process, writes or refreshes ``README.md`` (the card of
    :func:`hf_missing.hub.adapter_card`) in ``folder`` with the last evaluation results in the logs.

    When ``folder`` holds no saved adapter yet, the trained model's adapter is saved there first, so the card
    describes the weights it sits beside.

    Args:
        repo_id: the Hub repository the card names (``ORG/NAME``; also the card's title).
        dataset: the evaluation dataset's name or Hub id (model-index metadata of the results).
        missing: the missing-modality protocol (a dataset from ``simulate_missing`` or its settings dict).
        folder: where the card goes; defaults to the run's ``output_dir``.
    """

    def __init__(self, repo_id: str, *, dataset: str, missing: Any = None, folder: str | Path | None = None) -> None:
        if not dataset:
            raise ValueError("ModelCardCallback needs dataset=<the evaluation dataset's name or Hub id>.")
        self.repo_id, self.dataset, self.missing, self.folder = repo_id, dataset, missing, folder

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(self.folder or args.output_dir)
        if not (folder / ADAPTER_CONFIG_NAME).is_file():
            if model is None:
                raise ValueError(f"{folder} holds no adapter and the Trainer passed no model to save there.")
            find_diagnostics_model(model).save_pretrained(folder)
        card = adapter_card(folder, self.repo_id, results=last_eval_results(state.log_history),
                            missing=self.missing, dataset=self.dataset)
        card.save(folder / "README.md")
