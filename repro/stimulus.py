"""The papers' scale transforms, applied to normalized image tensors ``[N, 3, H, W]``.

* ``S(X)``  = CenterCrop(crop) then Resize(image_size), bilinear: the center, enlarged.
* ``S⁻¹(X)`` = Resize(shrink), bilinear, then Pad(pad, reflect): the whole image, shrunk.

Both act on the normalized tensor, as the authors' code did; crops, bilinear resizes and reflect padding
all commute with the per-channel affine normalization, so the order does not change the result.
Resizing does not antialias by default: the authors ran torchvision 0.15, whose tensor ``Resize`` did not,
and S⁻¹ shrinks, so antialiasing would change its result (``stimulus.antialias = true`` turns it on).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

TRANSFORMS = ("none", "S", "S_inv")


@dataclass(frozen=True)
class ScaleTransforms:
    crop: int = 112
    image_size: int = 224
    shrink: int = 112
    pad: int = 56
    antialias: bool = False

    @classmethod
    def from_profile(cls, profile: Mapping) -> "ScaleTransforms":
        stimulus = profile["stimulus"]
        return cls(crop=int(stimulus["crop"]), image_size=int(profile["model"]["image_size"]),
                   shrink=int(stimulus["shrink"]), pad=int(stimulus["pad"]), antialias=bool(stimulus["antialias"]))

    def _resize(self, x: torch.Tensor, size: int) -> torch.Tensor:
        return TF.resize(x, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=self.antialias)

    def scale_up(self, x: torch.Tensor) -> torch.Tensor:
        """S(X): the central ``crop`` square resized to ``image_size``."""
        return self._resize(TF.center_crop(x, [self.crop, self.crop]), self.image_size)

    def scale_down(self, x: torch.Tensor) -> torch.Tensor:
        """S⁻¹(X): the image resized to ``shrink`` and reflect-padded by ``pad`` on every side."""
        return TF.pad(self._resize(x, self.shrink), [self.pad], padding_mode="reflect")

    def apply(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The transform named ``none``, ``S`` or ``S_inv``."""
        if name == "none":
            return x
        if name == "S":
            return self.scale_up(x)
        if name == "S_inv":
            return self.scale_down(x)
        raise ValueError(f"unknown transform {name!r}; transforms are {', '.join(TRANSFORMS)}")

