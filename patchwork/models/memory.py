"""What a model's weights take and what the device holds: the estimate ``patchwork plan`` prints,
and the refusal ``run`` makes with it before building a model that cannot fit.

Both are read from a model built on the meta device (shapes, no memory), so a random-init model
at the schema's limits, or a checkpoint whose weights outgrow the machine, is refused in one line
instead of exhausting memory halfway through its construction.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from patchwork.errors import ModelError


def weight_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """Bytes of ``model``'s weights once loaded in ``dtype``: every floating-point parameter in
    ``dtype``, every other parameter and every buffer in its own dtype (the rotary frequencies
    transformers keeps in float32)."""
    parameters = sum(
        p.numel() * (dtype.itemsize if p.is_floating_point() else p.element_size())
        for p in model.parameters()
    )
    return parameters + sum(b.numel() * b.element_size() for b in model.buffers())


def device_memory(device: str) -> tuple[str, int | None]:
    """The device's name and memory in bytes (None where it cannot be read here)."""
    kind = device.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            return f"{device} (not visible here)", None
        index = torch.device(device).index or 0
        properties = torch.cuda.get_device_properties(index)
        return f"{device} {properties.name}", int(properties.total_memory)
    if kind == "cpu":
        try:
            pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return device, None
        return "cpu (RAM)", int(pages)
    return device, None


def size_text(count: int | None) -> str:
    """Bytes as ``patchwork plan`` prints them (GiB from a quarter GiB, else MiB)."""
    if count is None:
        return "unknown"
    return f"{count / 2**30:.2f} GiB" if count >= 2**28 else f"{count / 2**20:.1f} MiB"


def refuse_beyond_device(
    empty: nn.Module, dtype: torch.dtype, device: str, where: str | None = None
) -> None:
    """Refuse to build a model whose weights alone (``empty``: built on the meta device) exceed
    the memory of ``device``, with the estimate ``patchwork plan`` prints as its weights; a
    device whose memory cannot be read here is not refused.

    Raises:
        patchwork.errors.ModelError: naming the estimate and the device (after ``where``, the
            study's field, when given).
    """
    name, available = device_memory(device)
    needed = weight_bytes(empty, dtype)
    if available is not None and needed > available:
        raise ModelError(
            f"{f'{where}: ' if where else ''}the model's weights take {size_text(needed)} in "
            f"{str(dtype).removeprefix('torch.')} (the estimate of `patchwork plan`), more than "
            f"{name} holds ({size_text(available)}); choose a smaller model or dtype, or another "
            "device"
        )
