"""Where models run: one resolver for every stage that loads a model, and the dtype it runs in.

``device`` is spelled the same everywhere — settings (``EYEOPS_DEVICE``), the recipe's
``evaluate.device`` / ``serve.device``, ``eyeops serve|predict --device``:

- ``auto`` (default): the recipe defers to the settings, the settings' ``auto`` to the machine —
  the CUDA GPU when one is visible, else Apple's MPS, else the CPU;
- ``cpu``, ``mps``, ``cuda`` (the current CUDA device) or ``cuda:N`` (the N-th visible one).

Asking for an accelerator that is not there is a :class:`~eyeops.errors.ConfigError` naming the
field and what is visible, never a silent fall-back to the CPU. The pod side of the same choice
(how many GPUs a pod requests) is :func:`gpus_for`, so a pod never loads on CUDA without a GPU.

This module imports torch lazily: recipes and settings validate device names without it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from eyeops.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:[0-9]+)?)$"
_DEVICE = re.compile(DEVICE_PATTERN)
DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps (auto: the settings' device, else the accelerator)"

Device = Annotated[str, Field(pattern=DEVICE_PATTERN, description=DEVICE_HELP)]
"""A device name as recipes and settings spell it (validated without importing torch)."""


def check_device_name(name: str, field: str = "device") -> str:
    """``name`` if it is a device name recipes and settings accept; else a ConfigError naming ``field``."""
    if not isinstance(name, str) or not _DEVICE.match(name):
        raise ConfigError(f"{field} {name!r}: not a device (use {DEVICE_HELP})")
    return name


def gpus_for(device: str, gpu: int = 0, *, field: str = "device") -> int:
    """GPUs a pod must request to load on ``device`` with ``gpu`` asked for explicitly.

    ``cuda`` needs one, ``cuda:N`` needs N+1 (the index counts visible GPUs); ``auto`` follows
    ``gpu``; ``cpu``/``mps`` with GPUs would hold accelerators nobody uses: an error.
    """
    check_device_name(device, field)
    if device.startswith("cuda"):
        needed = int(device.partition(":")[2] or 0) + 1
        if gpu and gpu < needed:
            raise ConfigError(f"{field} {device!r} needs at least {needed} GPU(s) per pod; {gpu} requested")
        return max(gpu, needed)
    if device in ("cpu", "mps") and gpu:
        raise ConfigError(f"{field} {device!r} with {gpu} GPU(s) requested: the GPUs would sit idle")
    return gpu


def resolve_device(requested: str | torch.device | None = None, *, field: str = "device") -> torch.device:
    """The torch device a stage loads on; ``None``/``auto`` defers to ``EYEOPS_DEVICE`` (settings).

    A ``torch.device`` is taken as is (tests use ``meta``); a CUDA one is still checked against
    what is visible.
    """
    import torch

    if requested is None or requested == "auto":
        from eyeops.config import get_settings

        requested, field = get_settings().device, "EYEOPS_DEVICE (settings.device)"
        if requested == "auto":
            return _detected()
    if isinstance(requested, torch.device):
        device = requested
    else:
        device = torch.device(check_device_name(requested, field))
    if device.type == "cuda":
        return _checked_cuda(device, field)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{field} 'mps': no Apple MPS device is available here (use auto or cpu)")
    return device


def _detected() -> torch.device:
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _checked_cuda(device: torch.device, field: str) -> torch.device:
    import os

    import torch

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        why = (
            "this torch build has no CUDA support"
            if torch.version.cuda is None
            else f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={visible!r})"
        )
        raise ConfigError(f"{field} {str(device)!r}: {why}; use device auto or cpu, or run where a GPU is")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= count:
        raise ConfigError(
            f"{field} {str(device)!r}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1})"
        )
    return torch.device("cuda", index)


def supports_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CPU: yes; CUDA: Ampere or newer)."""
    import torch

    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return True


def preferred_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype a model of recipe dtype ``dtype`` runs in on ``device``: the recipe's, except that
    bfloat16 on a GPU without native bf16 (pre-Ampere: T4, V100) runs in float16, with a log note
    (the same numbers of bits and speed; bf16's range is what is lost)."""
    import torch

    wanted = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if wanted == torch.bfloat16 and not supports_bf16(device):
        log.warning("bfloat16 is not native on %s: running in float16 instead", device)
        return torch.float16
    return wanted


def mixed_precision(wanted: str, device: torch.device) -> str:
    """``train.mixed_precision`` (auto|bf16|fp16|no) → what ``device`` runs: fp32 | bf16 | fp16.

    The training counterpart of :func:`preferred_dtype`: auto is bf16 where native, fp16 on older
    GPUs, fp32 on CPU; bf16 on a GPU without it becomes fp16 (noted); fp16 needs a GPU.
    """
    import torch

    if device.type != "cuda":
        if wanted == "fp16":
            raise ConfigError("train.mixed_precision 'fp16' needs a GPU (use 'bf16', 'auto' or 'no' on CPU)")
        return "bf16" if wanted == "bf16" else "fp32"
    if wanted == "no":
        return "fp32"
    if wanted in ("auto", "bf16"):
        return "bf16" if preferred_dtype(torch.bfloat16, device) == torch.bfloat16 else "fp16"
    return wanted


def place(module: Any, device: torch.device) -> Any:
    """Move ``module`` to ``device``; bfloat16 weights a GPU cannot run become float16 there."""
    import torch

    module = module.to(device)
    if not supports_bf16(device):
        target = preferred_dtype(torch.bfloat16, device)
        for tensor in _tensors(module):
            if tensor.dtype == torch.bfloat16:
                tensor.data = tensor.data.to(target)
    return module


def _tensors(module: Any) -> Iterator[Any]:
    yield from module.parameters()
    yield from module.buffers()


def module_device(module: Any) -> torch.device:
    """The device of a module's first parameter (or buffer): where its inputs must go."""
    import torch

    for tensor in _tensors(module):
        return tensor.device
    return torch.device("cpu")


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with every tensor value on ``device`` (other values untouched)."""
    import torch

    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
