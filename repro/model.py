"""Architectures, weights and residual-stream taps: the one module that runs blocks by hand.

Every residual block has three taps, all holding their true values:

* ``I`` — the summand that carries the stream into the block;
* ``B`` — the block's own summand;
* ``O`` — their sum (in a ResNet, before the block's final ReLU).

What they are in each family of blocks (torchvision's ResNets, ConvNeXts and Vision Transformers, or a
user's adapter) and how each family labels its blocks is in ``repro.families``; callers import only from
here, and ``run`` dispatches on the model's family (``family_of``). In a ResNet, block ``"L.i"`` is
``layerL[i]``; ``I`` is the downsample branch's BN output in a downsample block, otherwise the previous
block's pre-ReLU sum (its ``O``), and for the very first block its input; ``B`` is the output of the block's
last BN (``bn2``; ``bn3`` for Bottleneck); ``O = B + identity``, before the ReLU.

Blocks are computed by hand out of their own modules rather than observed with forward hooks, so every
tap holds its true value: torchvision adds the identity in place and applies an in-place ReLU to the
tensor ``bn2`` returned, so a hook that keeps ``bn2``'s output by reference sees the post-ReLU block
output instead. That aliasing is available for ResNets as ``aliased=True`` (reference compatibility with
Lucent-made feature visualizations) and nowhere else.
"""
from __future__ import annotations

import hashlib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from repro.errors import UserError
# TAPS, BlockTaps, Label and OEdit are re-exported: callers import them from here.
from repro.families import FAMILIES, TAPS, BlockTaps, Family, Label, OEdit, ResNetFamily  # noqa: F401
from repro.hashing import IMAGENET_FILE_SHA256_PREFIX, file_sha256

# The ResNets that widths and stem can narrow (CompactResNet): their block kind and depths.
ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}
STANDARD_WIDTHS = (64, 128, 256, 512)
# torchvision's modules whose classification models belong to a known family of blocks.
TORCHVISION_FAMILY_MODULES = {"resnet": "resnet", "convnext": "convnext", "vision_transformer": "vit"}
FAMILY_ATTRIBUTE = "repro_family"  # where load_model keeps a model's adapter


class CompactResNet(ResNet):
    """torchvision's ResNet with chosen stage widths and an optional small-image stem.

    ``stem="small"`` is a 3x3 stride-2 convolution without max-pool, for images of about 64 px.
    Module names match torchvision's, so taps, state_dicts and every stage work unchanged.
    """

    def __init__(self, block, layers, widths, num_classes, stem="imagenet"):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        if stem == "small":
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=2, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        for stage, (width, depth) in enumerate(zip(widths, layers), start=1):
            setattr(self, f"layer{stage}", self._make_layer(block, width, depth, stride=1 if stage == 1 else 2))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[-1] * block.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


@dataclass(frozen=True)
class ModelSpec:
    """What model to build and with which weights (the profile's ``[model]`` table).

    ``arch``: resnet18/34/50/101/152 (narrowed by ``widths`` and ``stem``: ``CompactResNet``), any other
    torchvision classification model of the resnet, convnext or vit families (``widths`` and ``stem`` are
    a ResNet's and are not read for convnext and vit), or ``"package.module:callable"``, called with no
    arguments to build the model (``widths``, ``stem`` and ``num_classes`` are then the callable's own).
    ``family``: ``resnet``, ``convnext``, ``vit``, an adapter ``"package.module:Class"`` (a subclass of
    ``repro.families.Family``), or "" to infer it from the model's blocks.
    """

    arch: str = "resnet18"
    weights: str = "imagenet"
    weights_sha256: str = ""
    widths: tuple[int, ...] = STANDARD_WIDTHS
    stem: str = "imagenet"
    num_classes: int = 1000
    family: str = ""

    @classmethod
    def from_profile(cls, model: Mapping) -> "ModelSpec":
        return cls(
            arch=model.get("arch", "resnet18"),
            weights=str(model.get("weights", "imagenet")),
            weights_sha256=model.get("weights_sha256", "") or "",
            widths=tuple(model.get("widths", STANDARD_WIDTHS)),
            stem=model.get("stem", "imagenet"),
            num_classes=int(model.get("num_classes", 1000)),
            family=model.get("family", "") or "",
        )

    @property
    def is_standard(self) -> bool:
        return self.widths == STANDARD_WIDTHS and self.stem == "imagenet" and self.num_classes == 1000

    @property
    def is_callable(self) -> bool:
        return ":" in self.arch


def state_dict_sha256(model: nn.Module) -> str:
    """Content hash of the parameters and buffers, independent of how they were stored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def torchvision_family(arch: str) -> str:
    """The family of a torchvision classification model's name ("" when it is none of the known ones)."""
    if arch not in torchvision.models.list_models(module=torchvision.models):
        return ""
    module = torchvision.models.get_model_builder(arch).__module__.rsplit(".", 1)[-1]
    return TORCHVISION_FAMILY_MODULES.get(module, "")


def import_target(target: str, what: str):
    """The object named ``"package.module:attribute"``; a one-line UserError when it cannot be had."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise UserError(f"{what} {target!r}: expected package.module:name")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or the module failing as it runs
        reason = (str(error).splitlines() or [""])[0] or type(error).__name__
        raise UserError(f"{what} {target!r}: cannot import {module_name} ({reason})") from None
    if not hasattr(module, attribute):
        raise UserError(f"{what} {target!r}: {module_name} has no {attribute}")
    return getattr(module, attribute)


def _user_model(spec: ModelSpec) -> nn.Module:
    build = import_target(spec.arch, "model")
    if not callable(build):
        raise UserError(f"model {spec.arch!r} is a {type(build).__name__}, not a callable that builds a model")
    model = build()
    if not isinstance(model, nn.Module):
        raise UserError(f"model {spec.arch!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _architecture(spec: ModelSpec) -> nn.Module:
    if spec.is_callable:
        return _user_model(spec)
    family = torchvision_family(spec.arch)
    if not family:
        raise UserError(f"unknown model {spec.arch!r}; known models: {', '.join(ARCHS)}, any torchvision "
                        "classification model of the resnet, convnext or vit families, or package.module:callable")
    if spec.arch in ARCHS:
        if spec.is_standard:
            return torchvision.models.get_model(spec.arch, weights=None)
        block, layers = ARCHS[spec.arch]
        return CompactResNet(block, layers, spec.widths, spec.num_classes, spec.stem)
    if family == "resnet" and (spec.widths != STANDARD_WIDTHS or spec.stem != "imagenet"):
        raise UserError(f"widths and stem narrow {', '.join(ARCHS)} only, not {spec.arch}")
    classes = {} if spec.num_classes == 1000 else {"num_classes": spec.num_classes}
    return torchvision.models.get_model(spec.arch, weights=None, **classes)


def _load_torchvision_weights(spec: ModelSpec, name: str) -> nn.Module:
    """torchvision's weights ``name`` (such as IMAGENET1K_V1) for the architecture, through its own cache."""
    if spec.is_callable or not torchvision_family(spec.arch):
        raise UserError(f"weights {spec.weights!r} need a torchvision architecture, not {spec.arch!r}")
    standard = spec.is_standard if torchvision_family(spec.arch) == "resnet" else spec.num_classes == 1000
    if not standard:
        raise UserError(f"weights {spec.weights!r} need the standard architecture (widths 64-512, imagenet stem, "
                        "1000 classes)")
    members = torchvision.models.get_model_weights(spec.arch).__members__
    if name not in members:
        raise UserError(f"{spec.arch} has no torchvision weights {name!r}; it has {', '.join(members)}")
    try:
        return torchvision.models.get_model(spec.arch, weights=name)
    except Exception as error:  # any download failure: URLError, HTTPError, socket errors, ...
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(
            f"could not load torchvision's {name} weights for {spec.arch} "
            f"(not in {cache} and no network: {type(error).__name__}). "
            "Pass --weights PATH to a local state_dict instead."
        ) from None


def _load_imagenet(spec: ModelSpec) -> nn.Module:
    return _load_torchvision_weights(spec, "IMAGENET1K_V1")


def _is_weights_name(weights: str) -> bool:
    """A torchvision weights name (IMAGENET1K_V1, DEFAULT, ...) rather than a path."""
    return bool(re.fullmatch(r"[A-Z][A-Z0-9_]*", weights)) and not Path(weights).exists()


def _load_path(spec: ModelSpec) -> tuple[nn.Module, str]:
    path = Path(spec.weights).expanduser()
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    sha = file_sha256(path)
    if spec.weights_sha256 and sha != spec.weights_sha256.lower():
        raise UserError(f"SHA-256 mismatch for {path}: expected {spec.weights_sha256}, found {sha}")
    model = _architecture(spec)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).splitlines()[0][:160] if str(error).strip() else type(error).__name__
        if path.stat().st_size == 0:
            reason = "the file is empty"
        raise UserError(f"{path} is not a saved state_dict ({reason})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} holds a {type(state).__name__}, not a state_dict of tensors for {spec.arch}")
    problem = state_dict_mismatch(model, state)
    if problem:
        raise UserError(f"{path} is not a state_dict for {spec.arch} ({problem}); is it another architecture?")
    model.load_state_dict(state)
    return model, sha


def state_dict_mismatch(model: nn.Module, state: Mapping) -> str:
    """What keeps ``state`` from loading into ``model``, in a few words ("" when it fits)."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    shapes = [key for key in expected if key in state and tuple(state[key].shape) != tuple(expected[key].shape)]
    parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in
             ((missing, "missing keys"), (unexpected, "unexpected keys"), (shapes, "shape mismatches")) if keys]
    return ", ".join(parts)


def load_model(spec: ModelSpec) -> tuple[nn.Module, dict]:
    """Build the model in eval mode with frozen weights; return it with its weights record.

    ``spec.weights`` is ``imagenet`` (torchvision's IMAGENET1K_V1 through its own API and cache), another
    torchvision weights name of the architecture (``IMAGENET1K_V2``, ``DEFAULT``), ``random:SEED`` (the
    architecture's initialisation under that seed) or a path to a state_dict. The model's family adapter
    (``spec.family``, else inferred from its blocks) is checked and kept on the model (``family_of``).
    """
    file_sha = ""
    if spec.weights == "imagenet":
        model = _load_imagenet(spec)
    elif _is_weights_name(spec.weights):
        model = _load_torchvision_weights(spec, spec.weights)
    elif spec.weights.startswith("random:"):
        match = re.fullmatch(r"random:(\d+)", spec.weights)
        if not match:
            raise UserError(f"weights {spec.weights!r}: expected random:SEED with an integer SEED")
        torch.manual_seed(int(match.group(1)))
        model = _architecture(spec)
    else:
        model, file_sha = _load_path(spec)
    model.eval().requires_grad_(False)
    setattr(model, FAMILY_ATTRIBUTE, resolve_family(spec.family, model))
    record = {
        "weights": spec.weights,
        "weights_sha256": state_dict_sha256(model),
        "weights_file_sha256": file_sha,
        "imagenet_v1": spec.weights in ("imagenet", "IMAGENET1K_V1")
        or file_sha.startswith(IMAGENET_FILE_SHA256_PREFIX.get(spec.arch, "-")),
    }
    return model, record


# ---------------------------------------------------------------- families


def infer_family(model: nn.Module) -> Family:
    """The family whose block classes the model holds; a one-line UserError when none or several."""
    if isinstance(model, ResNet):  # the common case, without a walk over every module
        return FAMILIES["resnet"]
    found = {family.name for module in model.modules() for family in FAMILIES.values()
             if isinstance(module, family.block_classes)}
    name = type(model).__name__
    if len(found) > 1:
        raise UserError(f"{name} holds blocks of several families ({', '.join(sorted(found))}); declare model.family")
    if not found:
        first = next(iter(getattr(model, "layer1", [])), None)  # a ResNet-like model of the user's own blocks
        if isinstance(first, nn.Module):
            raise UserError(f"block 1.0: class {type(first).__name__} is not a known residual block; "
                            "declare model.family")
        known = ", ".join(cls.__name__ for family in FAMILIES.values() for cls in family.block_classes)
        raise UserError(f"{name}: none of its modules is a known residual block ({known}); declare model.family")
    return FAMILIES[found.pop()]


def resolve_family(declared: str, model: nn.Module) -> Family:
    """The adapter named by ``model.family`` (or inferred when ""), checked against the model."""
    if not declared:
        family = infer_family(model)
    elif declared in FAMILIES:
        family = FAMILIES[declared]
    elif ":" in declared:
        adapter = import_target(declared, "model.family")
        if not (isinstance(adapter, type) and issubclass(adapter, Family)):
            raise UserError(f"model.family {declared!r} is not a subclass of repro.families.Family")
        family = adapter()
    else:
        raise UserError(f"model.family must be {', '.join(FAMILIES)} or package.module:Adapter, not {declared!r}")
    family.check(model)
    return family


def family_of(model: nn.Module) -> Family:
    """The model's adapter: the one ``load_model`` kept on it, else inferred from its blocks."""
    family = getattr(model, FAMILY_ATTRIBUTE, None)
    return family if family is not None else infer_family(model)


# ---------------------------------------------------------------- blocks and taps


def blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Blocks in forward order, by their family's labels (``"L.i"`` in a ResNet)."""
    return family_of(model).blocks(model)


def last_bn_conv(block: nn.Module) -> tuple[nn.BatchNorm2d, nn.Conv2d]:
    """The block's last BN and conv, which make the summand B: bn2/conv2, or bn3/conv3 of a Bottleneck.

    ResNet blocks only; ``weight_parts`` names the analogous weights of any family."""
    if not isinstance(block, (BasicBlock, Bottleneck)):
        raise UserError(f"a {type(block).__name__} has no last BN and conv of a ResNet block; see weight_parts")
    return ResNetFamily.last_bn_conv(block)


def weight_parts(model: nn.Module, block: str) -> tuple[torch.Tensor, torch.Tensor] | str:
    """The per-channel scale ``[C]`` and the weight ``[C, ...]`` that make the block's summand B (a ResNet's
    last BN weight and last conv weight), or a sentence saying why the block has none."""
    return family_of(model).weight_parts(model, block)


def block_widths(model: nn.Module) -> dict[str, int]:
    """Channels of every block's taps (I, B and O have the same)."""
    family = family_of(model)
    return {name: family.width(model, name) for name in family.blocks(model)}


def check_taps(model: nn.Module, wanted: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    known = blocks(model)
    wanted = list(wanted)
    for block, tap in wanted:
        if block not in known:
            raise UserError(f"unknown block {block!r}; this model has blocks {', '.join(known)}")
        if tap not in TAPS:
            raise UserError(f"unknown tap {tap!r}; taps are I, B, O")
    return wanted


def aliased_alike(model: nn.Module, block: str, tap: str) -> bool:
    """Whether the aliased (by-reference) reading of a tap is its true value: a ResNet block's ``I`` that is a
    tensor of its own (the downsample branch's output, or the first block's input), which no in-place
    operation touches. Every other tap reads the post-ReLU block output or stream under that reading."""
    family = family_of(model)
    return tap == "I" and family.name == "resnet" and family.own_input(model, block)


def same_tensor(model: nn.Module, block: str, tap: str) -> tuple[str, str]:
    """The canonical (block, tap) holding this tap's tensor: the ``I`` of a block that reads the stream
    straight from the block before it is that block's ``O``."""
    family = family_of(model)
    if tap == "I" and not family.own_input(model, block):
        names = list(family.blocks(model))
        return names[names.index(block) - 1], "O"
    return block, tap


@dataclass(frozen=True)
class TapLayout:
    """The stored (block, tap, channel) grid of some blocks, and which computed tensor fills each label."""

    blocks: tuple[str, ...]
    widths: tuple[int, ...]  # channels of each block (its three taps share the width)
    source: Mapping[Label, Label]  # (block, tap) label → the canonical label of its tensor (same_tensor)

    @property
    def max_width(self) -> int:
        return max(self.widths)

    @property
    def computed(self) -> list[Label]:
        """The tensors to compute: each shared tensor once."""
        return sorted(set(self.source.values()))

    def width(self, block: str) -> int:
        return self.widths[self.blocks.index(block)]

    def valid(self, channels: Iterable[int] | None = None) -> np.ndarray:
        """Bool (block, channel): the channel exists in the block (channels default to 0 .. max_width - 1)."""
        channel = np.arange(self.max_width) if channels is None else np.asarray(list(channels))
        return channel[None, :] < np.array(self.widths)[:, None]

    def valid_channels(self, block: str) -> list[int]:
        return list(range(self.width(block)))


def tap_layout(model: nn.Module, blocks_wanted: Iterable[str]) -> TapLayout:
    """The layout of these blocks (in the order given, each once), widths read from the modules."""
    chosen = tuple(dict.fromkeys(blocks_wanted))
    if not chosen:
        raise UserError("no blocks to record")
    check_taps(model, [(block, tap) for block in chosen for tap in TAPS])
    widths = block_widths(model)
    source = {(block, tap): same_tensor(model, block, tap) for block in chosen for tap in TAPS}
    return TapLayout(chosen, tuple(widths[block] for block in chosen), source)


class _Done(Exception):
    """Raised internally to stop the forward once every requested tap is read."""


def run(
    model: nn.Module,
    x: torch.Tensor,
    taps: Iterable[tuple[str, str]] = (),
    *,
    stop: bool = False,
    aliased: bool = False,
    center: bool = False,
    edit_output: Mapping[str, OEdit] | None = None,
) -> tuple[dict[tuple[str, str], torch.Tensor], torch.Tensor | None]:
    """One forward through the model, reading the requested taps.

    Returns ``(values, logits)``. ``values[(block, tap)]`` is the full map ``[N, C, H, W]``, or the
    center neuron ``[N, C]`` with ``center=True``. With ``stop=True`` the forward ends right after the
    last requested tap and ``logits`` is None. ``edit_output[block]`` replaces the block's ``O`` map
    (in a ResNet before its ReLU) before the forward goes on (used for ablation); it may return a larger
    batch, such as one copy of the batch per ablation condition, and the rest of the forward runs on that.
    ``aliased=True`` (ResNets only) reads ``B`` and the pre-ReLU taps as the post-ReLU block output, as a
    by-reference hook does (reference compatibility only).
    """
    family = family_of(model)
    if aliased and not isinstance(family, ResNetFamily):
        raise UserError(f"aliased taps reproduce an in-place ReLU of torchvision's ResNets; family {family.name} "
                        "has none (set model.aliased = false)")
    wanted = set(check_taps(model, taps))
    values: dict[tuple[str, str], torch.Tensor] = {}

    def read(block: str, block_taps: BlockTaps) -> None:
        for tap in TAPS:
            if (block, tap) in wanted:
                # A clone, so the full map is freed once the forward moves on.
                values[(block, tap)] = center_of(block_taps[tap]).clone() if center else block_taps[tap]
                if stop and len(values) == len(wanted):
                    raise _Done

    try:
        logits = family.forward(model, x, read, edit_output or {}, aliased=aliased)
    except _Done:
        return values, None
    return values, logits


def center_index(height: int, width: int) -> tuple[int, int]:
    """Lucent's center neuron: (H//2, W//2), the bottom-right of the central 2x2 for even sizes."""
    return height // 2, width // 2


def center_of(tensor: torch.Tensor) -> torch.Tensor:
    y, x = center_index(tensor.shape[-2], tensor.shape[-1])
    return tensor[..., y, x]


@dataclass(frozen=True)
class TapInfo:
    block: str
    tap: str
    channels: int
    height: int
    width: int
    same_as: str

    @property
    def center(self) -> tuple[int, int]:
        return center_index(self.height, self.width)


def describe_taps(model: nn.Module, image_size: int) -> list[TapInfo]:
    """Every tap of every block with its shape at ``image_size`` and its center position."""
    wanted = [(b, t) for b in blocks(model) for t in TAPS]
    with torch.no_grad():
        values, _ = run(model, torch.zeros(1, 3, image_size, image_size), wanted)
    infos = []
    for block, tap in wanted:
        _, channels, height, width = values[(block, tap)].shape
        canonical = same_tensor(model, block, tap)
        same_as = "" if canonical == (block, tap) else f"{canonical[0]}:{canonical[1]}"
        infos.append(TapInfo(block, tap, channels, height, width, same_as))
    return infos
