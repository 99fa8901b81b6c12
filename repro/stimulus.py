"""The papers' scale transforms, applied to normalized image tensors ``[N, 3, H, W]``.

* ``S(X)``  = CenterCrop(crop) then Resize(image_size), bilinear: the center, enlarged.
* ``S⁻¹(X)`` = Resize(shrink), bilinear, then Pad(pad, reflect): the whole image, shrunk.

Both act on the normalized tensor, as the authors' code did; crops, bilinear resizes and reflect padding
all commute with the per-channel affine normalization, so the order does not change the result.
Resizing does not antialias by default: the authors ran torchvision 0.15, whose tensor ``Resize`` did not,
and S⁻¹ shrinks, so antialiasing would change its result (``stimulus.antialias = true`` turns it on).

``TRANSFORMS`` is the registry (``none``, ``S``, ``S_inv``): each entry makes one ``x → x`` callable
from the settings, composed of small steps as Lucent's transforms are; a new transform is one entry.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from repro.settings import StimulusSettings, as_profile

Transform = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- the steps


def resize(size: int, antialias: bool) -> Transform:
    """Bilinear resize to a ``size`` square (S, S⁻¹ and the ablation's scale crops)."""

    def inner(x: torch.Tensor) -> torch.Tensor:
        return TF.resize(x, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=antialias)

    return inner


def center_crop(size: int) -> Transform:
    def inner(x: torch.Tensor) -> torch.Tensor:
        return TF.center_crop(x, [size, size])

    return inner


def reflect_pad(pad: int) -> Transform:
    def inner(x: torch.Tensor) -> torch.Tensor:
        return TF.pad(x, [pad], padding_mode="reflect")

    return inner


def compose(*steps: Transform) -> Transform:
    def inner(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return inner


@dataclass(frozen=True)
class ScaleTransforms:
    """S and S⁻¹ as a profile sets them: its [stimulus] table and the model's input size."""

    stimulus: StimulusSettings
    image_size: int

    @classmethod
    def from_profile(cls, profile: Mapping) -> "ScaleTransforms":
        profile = as_profile(profile)
        return cls(profile.stimulus, profile.model.image_size)

    def scale_up(self, x: torch.Tensor) -> torch.Tensor:
        """S(X): the central ``crop`` square resized to ``image_size``."""
        return TRANSFORMS["S"](self)(x)

    def scale_down(self, x: torch.Tensor) -> torch.Tensor:
        """S⁻¹(X): the image resized to ``shrink`` and reflect-padded by ``pad`` on every side."""
        return TRANSFORMS["S_inv"](self)(x)

    def apply(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The transform named ``none``, ``S`` or ``S_inv``."""
        if name not in TRANSFORMS:
            raise ValueError(f"unknown transform {name!r}; transforms are {', '.join(TRANSFORMS)}")
        return TRANSFORMS[name](self)(x)


# The stimulus transforms, in the order of the ``transform`` coordinate: name → settings → x → x.
TRANSFORMS: dict[str, Callable[[ScaleTransforms], Transform]] = {
    "none": lambda settings: compose(),
    "S": lambda s: compose(center_crop(s.stimulus.crop), resize(s.image_size, s.stimulus.antialias)),
    "S_inv": lambda s: compose(resize(s.stimulus.shrink, s.stimulus.antialias), reflect_pad(s.stimulus.pad)),
}


def transforms(profile: Mapping) -> dict[str, Transform]:
    """Every stimulus transform with the profile's settings, by name."""
    settings = ScaleTransforms.from_profile(profile)
    return {name: make(settings) for name, make in TRANSFORMS.items()}

