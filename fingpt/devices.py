"""Where a model runs and in which dtype: the one reading of the `device` and `dtype` that export,
evaluate and the server are given.

    device  None or auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:N
    dtype   None (the model's own), auto (bfloat16 on CUDA, else the model's own), float32,
            bfloat16, float16, int8 (weight-only, on a CPU: fingpt.quantize)
"""

from __future__ import annotations

import torch
import torch.nn as nn

DTYPES = ("float32", "bfloat16", "float16", "int8")
FLOATS = DTYPES[:3]  # what a bundle stores


def resolve_device(device: str | None) -> str:
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    device = str(device)
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device} is not one of auto, cpu, cuda, cuda:N")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if parsed.type == "cuda" and (parsed.index or 0) >= gpus:
        seen = f"torch sees CUDA GPUs cuda:0 to cuda:{gpus - 1}" if gpus else "torch sees no CUDA GPU"
        raise ValueError(
            f"device {device} is not available here ({seen}): use device={'cuda' if gpus else 'cpu'}"
        )
    return device


def check_dtype(dtype: str, choices: tuple[str, ...] = DTYPES) -> str:
    if dtype not in choices:
        raise ValueError(f"dtype must be one of {', '.join(choices)}, got {dtype!r}")
    return dtype


def resolve_dtype(dtype: str | None, device: str, own: str, choices: tuple[str, ...] = DTYPES) -> str:
    """The dtype to run in on `device` (resolved), for a model stored in `own`."""
    if dtype is None:
        return own
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else own
    return check_dtype(dtype, choices)


def dtype_of(model: nn.Module) -> str:
    """The dtype of a model's parameters, by name: float32, bfloat16, ..."""
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def native_bfloat16(accelerator: str) -> bool:
    """Whether bfloat16 matrix products run natively on `accelerator` (cpu, gpu/cuda, or auto):
    on a CUDA GPU that has them, or on a CPU with AVX-512 (oneDNN's bf16 kernels). Elsewhere they
    are emulated and slow: on an AVX2-only EPYC, 0.7 GFLOP/s against 43.7 in float32 (1024 x
    1024, 2 threads)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()
