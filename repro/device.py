"""The one device decision: ``--device auto|cpu|cuda``, resolved once where a run starts and passed to every
stage; no stage moves the caller's model (``place`` returns a copy on the device).

Lucent keeps a module-level device in each of its modules (chosen at import: CUDA whenever CUDA exists) and
its colour decorrelation picks CUDA on every call when CUDA exists. ``lucent_on`` points the module-level
ones at the run's device; ``check_lucent`` refuses the one combination Lucent cannot run (CPU FZs on a
machine with CUDA).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch

from repro.errors import UserError

CHOICES = ("auto", "cpu", "cuda")


def resolve(name: str | torch.device | None = "auto") -> torch.device:
    """The run's device: ``auto`` is CUDA when available, else the CPU; ``cuda`` without CUDA is an error."""
    if isinstance(name, torch.device):
        return name
    name = "auto" if name is None else str(name)
    if name not in CHOICES and not name.startswith("cuda:"):
        raise UserError(f"--device {name!r}: expected one of {', '.join(CHOICES)} (or cuda:N)")
    available = torch.cuda.is_available()
    if name.startswith("cuda") and not available:
        built = torch.version.cuda or "none"
        raise UserError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}, "
                        f"CUDA build {built}); use --device cpu or --device auto")
    if name == "auto":
        return torch.device("cuda" if available else "cpu")
    return torch.device(name)


def place(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` when it already lives on ``device``, else an eval-mode copy there (the caller's is untouched)."""
    current = next(model.parameters()).device
    if current == device or (current.type == device.type and device.index is None):
        return model
    return copy.deepcopy(model).to(device)


def lucent_device() -> torch.device:
    """The device Lucent's modules chose at import."""
    from repro.optvis import spatial

    return torch.device(spatial.device)


def check_lucent(device: torch.device) -> None:
    if device.type == "cpu" and torch.cuda.is_available():
        raise UserError("FZs on the CPU of a machine with CUDA are not possible: Lucent's colour decorrelation "
                        "always runs on CUDA when CUDA exists; use --device cuda (or auto)")


@contextlib.contextmanager
def lucent_on(device: torch.device) -> Iterator[None]:
    """Point Lucent's module-level device at ``device`` for the block (restored afterwards)."""
    from repro import optvis

    modules = (optvis.transform, optvis.spatial, optvis.color)
    saved = [getattr(module, "device", None) for module in modules]
    for module in modules:
        module.device = device
    try:
        yield
    finally:
        for module, device_before in zip(modules, saved):
            module.device = device_before
