"""Which floating-point precision a run trains and evaluates in: ``TrainingArguments`` settings from a name.

``bf16`` is autocast mixed precision (weights, optimizer state and the loss stay fp32; matrix products run in
bfloat16), which ``Trainer`` applies through Accelerate. It pays only where the hardware multiplies bfloat16 natively:
a CUDA GPU with bf16 support, or a CPU with AVX512-BF16 or AMX instructions (demo training steps 1.7-2.1x and
evaluation 2.3-2.7x faster on the 2-core AMD EPYC machines, ``benchmarks/results/precision.md``). Elsewhere the
products are emulated and slower than fp32, so ``auto`` chooses bf16 only where :func:`native_bf16` holds.
"""

from __future__ import annotations

import torch

PRECISIONS = ("auto", "fp32", "bf16")
_CPU_BF16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's instruction-set probes


def native_bf16(use_cpu: bool) -> bool:
    """Whether the device a run trains on multiplies bfloat16 natively: the GPU (``use_cpu`` false and CUDA
    available) when it supports bf16, else the CPU when it has AVX512-BF16 or AMX."""
    if not use_cpu and torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return any(getattr(torch.cpu, check, lambda: False)() for check in _CPU_BF16_CHECKS)


def resolve_precision(precision: str, training: dict) -> str:
    """The precision a run with these ``TrainingArguments`` settings (a preset's ``training`` block) gets under
    ``precision``: "fp32" and "bf16" as named; "auto" keeps a preset's own fp16 / bf16 choice, else bf16 where
    :func:`native_bf16` holds, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {PRECISIONS} (auto: bf16 where the "
                         "hardware computes it natively, else fp32).")
    if precision != "auto":
        return precision
    for name in ("fp16", "bf16"):
        if training.get(name):
            return name
    return "bf16" if native_bf16(bool(training.get("use_cpu"))) else "fp32"


def precision_arguments(precision: str) -> dict[str, bool]:
    """``TrainingArguments`` overrides for a resolved precision ("fp32", "fp16" or "bf16")."""
    return {"fp16": precision == "fp16", "bf16": precision == "bf16"}


def autocast(precision: str, device_type: str) -> torch.autocast:
    """The autocast context a resolved precision evaluates under on ``device_type`` (disabled for "fp32"), as
    ``Trainer`` trains under it."""
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type, dtype=dtype, enabled=precision != "fp32")
