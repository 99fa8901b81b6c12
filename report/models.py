"""The model a store was made of, read from its root attrs (no torch): its architecture, family of residual
blocks, weights and profile, whether two stores hold the same model, and a label for each store compared.

The architecture comes from the store's ``identity`` (``profile.model.arch`` for a store that predates it),
the weights' identity from their state-dict hash. The family is the profile's ``model.family`` where set,
else read from the architecture's name (torchvision's model names and the zoo's callables carry it).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

FAMILY_NAMES = (("convnext", "convnext"), ("vit", "vit"), ("resnet", "resnet"), ("resnext", "resnet"))
# How the papers and torchvision's documentation write the architectures the profiles ship.
NETWORK_NAMES = {"resnet18": "ResNet18", "resnet50": "ResNet50", "convnext_tiny": "ConvNeXt-T", "vit_b_16": "ViT-B/16"}


@dataclass(frozen=True)
class Model:
    arch: str
    family: str
    weights: str
    weights_sha256: str
    profile: str

    @property
    def name(self) -> str:
        """The network as a title names it: torchvision's name for the shipped architectures, else ``arch``."""
        return NETWORK_NAMES.get(self.arch, self.arch)

    def same_as(self, other: "Model") -> bool:
        """Same architecture and the same weights: stores that differ only in how they were computed."""
        return self.arch == other.arch and self.weights_sha256 == other.weights_sha256

    def describe(self) -> str:
        return (f"architecture `{self.arch}` ({self.family} blocks), weights `{self.weights}` "
                f"(sha256 `{self.weights_sha256[:12] or 'n/a'}`), profile `{self.profile}`")


def _profile(attrs: Mapping) -> dict:
    recorded = attrs.get("profile") or {}
    if isinstance(recorded, str):
        try:
            recorded = json.loads(recorded)
        except ValueError:
            return {}
    return recorded if isinstance(recorded, dict) else {}


def family_from_arch(arch: str) -> str:
    """``resnet``, ``convnext`` or ``vit`` as the architecture's name says, else ``unknown``."""
    name = arch.rpartition(":")[2].lower() if ":" in arch else arch.lower()
    for word, family in FAMILY_NAMES:
        if re.search(rf"(^|_){word}", name):
            return family
    return "unknown"


def of(attrs: Mapping) -> Model:
    """The model of a store's root attrs."""
    identity = attrs.get("identity") or {}
    model = _profile(attrs).get("model") or {}
    arch = str(identity.get("arch") or model.get("arch") or "unknown")
    family = str(identity.get("family") or model.get("family") or family_from_arch(arch))
    return Model(arch=arch, family=family, weights=str(attrs.get("weights", "") or model.get("weights", "")),
                 weights_sha256=str(identity.get("weights_sha256") or attrs.get("weights_sha256") or ""),
                 profile=str(attrs.get("profile_name", "")) or "unknown")


def labels(models: Sequence[Model]) -> list[str]:
    """One distinct label per store, "profile · arch", with the weights (then a count) where that repeats."""
    found = [f"{model.profile} · {model.arch}" for model in models]
    found = [f"{label} · {model.weights}" if found.count(label) > 1 else label for label, model in zip(found, models)]
    return [f"{label} ({found[:index + 1].count(label)})" if found.count(label) > 1 else label
            for index, label in enumerate(found)]
