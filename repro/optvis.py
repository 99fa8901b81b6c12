"""Lucent's optvis modules, imported once here.

Lucent imports kornia, which scripts functions with ``torch.jit.script``; recent torch deprecates that with a
FutureWarning on every import. Only that warning is silenced, and only during the import.
"""
import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from lucent.optvis import param, transform
    from lucent.optvis.param import color, spatial

__all__ = ["param", "transform", "color", "spatial"]
