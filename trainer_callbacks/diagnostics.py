"""Log what an injected method exposes through its diagnostics hook (e.g. REP's gates) with the training loss."""

from __future__ import annotations

from typing import Any

from accelerate.utils import extract_model_from_parallel
from peft import PeftModel
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments


def find_diagnostics_model(model: nn.Module) -> Any:
    """The hf_missing wrapper inside ``model``: what a ``PeftModel``, DDP or ``torch.compile`` wrapper holds (or
    ``model`` itself); raises ``TypeError`` if it has no ``diagnostics()``."""
    inner = extract_model_from_parallel(model)  # DDP / DataParallel / compiled -> the module
    if isinstance(inner, PeftModel):
        inner = inner.get_base_model()
    if not callable(getattr(inner, "diagnostics", None)):
        raise TypeError(
            f"{type(inner).__name__} exposes no diagnostics(); MethodDiagnosticsCallback logs the method diagnostics "
            "of an hf_missing MissingModalityForClassification (possibly inside a PeftModel)."
        )
    return inner


class MethodDiagnosticsCallback(TrainerCallback):
    """Adds ``model.diagnostics()`` (REP: ``rep/<adapter>/alpha_text``, ``beta_p``, ``eps_s``, ...; whatever a
    method's pooled tensors return from ``PooledTensors.diagnostics``) to every training log.

    The values go into the ``logs`` dict and into the ``trainer_state.json`` entry Trainer has just
    appended for that log. Trainer calls callbacks in order and puts its reporting integrations
    (TensorBoard, W&B, ...) first; for them to see the values too, register this callback ahead of them:
    ``trainer.callback_handler.callbacks.insert(0, MethodDiagnosticsCallback())``.

    Args:
        prefix: prepended to every key (e.g. ``"diagnostics/"``).
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is not None:
            find_diagnostics_model(model)  # fail before the first step, not at the first log

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, float] | None = None, model: nn.Module | None = None, **kwargs: Any) -> None:
        if logs is None or model is None or "loss" not in logs:
            return  # evaluation and end-of-training summaries carry no step diagnostics
        values = {f"{self.prefix}{k}": float(v) for k, v in find_diagnostics_model(model).diagnostics().items()}
        logs.update(values)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)
