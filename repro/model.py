"""Architectures, weights and residual-stream taps: the one module that runs blocks by hand.

Every block ``"L.i"`` (``layerL[i]``) exposes three taps, all before the block's final ReLU:

* ``I`` — the input summand: the downsample branch's BN output in a downsample block, otherwise the
  previous block's pre-ReLU sum (its ``O``); for the very first block, its input.
* ``B`` — the block summand: the output of the block's last BN (``bn2``; ``bn3`` for Bottleneck).
* ``O`` — ``B + identity``, before the ReLU.

Blocks are computed by hand out of their own modules rather than observed with forward hooks, so every
tap holds its true value: torchvision adds the identity in place and applies an in-place ReLU to the
tensor ``bn2`` returned, so a hook that keeps ``bn2``'s output by reference sees the post-ReLU block
output instead. That aliasing is available as ``aliased=True`` (reference compatibility with
Lucent-made feature visualizations) and nowhere else.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from repro.errors import UserError
from repro.hashing import IMAGENET_FILE_SHA256_PREFIX, file_sha256

TAPS = ("I", "B", "O")
ARCHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}
STANDARD_WIDTHS = (64, 128, 256, 512)

OEdit = Callable[[torch.Tensor], torch.Tensor]
Label = tuple[str, str]  # (block, tap)


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
    arch: str = "resnet18"
    weights: str = "imagenet"
    weights_sha256: str = ""
    widths: tuple[int, ...] = STANDARD_WIDTHS
    stem: str = "imagenet"
    num_classes: int = 1000

    @classmethod
    def from_profile(cls, model: Mapping) -> "ModelSpec":
        return cls(
            arch=model.get("arch", "resnet18"),
            weights=str(model.get("weights", "imagenet")),
            weights_sha256=model.get("weights_sha256", "") or "",
            widths=tuple(model.get("widths", STANDARD_WIDTHS)),
            stem=model.get("stem", "imagenet"),
            num_classes=int(model.get("num_classes", 1000)),
        )

    @property
    def is_standard(self) -> bool:
        return self.widths == STANDARD_WIDTHS and self.stem == "imagenet" and self.num_classes == 1000


def state_dict_sha256(model: nn.Module) -> str:
    """Content hash of the parameters and buffers, independent of how they were stored."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _architecture(spec: ModelSpec) -> nn.Module:
    if spec.arch not in ARCHS:
        raise UserError(f"unknown model {spec.arch!r}; known models: {', '.join(ARCHS)}")
    block, layers = ARCHS[spec.arch]
    if spec.is_standard:
        return torchvision.models.get_model(spec.arch, weights=None)
    return CompactResNet(block, layers, spec.widths, spec.num_classes, spec.stem)


def _load_imagenet(spec: ModelSpec) -> nn.Module:
    if not spec.is_standard:
        raise UserError("weights 'imagenet' need the standard architecture (widths 64-512, imagenet stem)")
    try:
        return torchvision.models.get_model(spec.arch, weights="IMAGENET1K_V1")
    except Exception as error:  # any download failure: URLError, HTTPError, socket errors, ...
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise UserError(
            f"could not load torchvision's IMAGENET1K_V1 weights for {spec.arch} "
            f"(not in {cache} and no network: {type(error).__name__}). "
            "Pass --weights PATH to a local state_dict instead."
        ) from None


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

    ``spec.weights`` is ``imagenet`` (torchvision's IMAGENET1K_V1 through its own API and cache),
    ``random:SEED`` (torchvision's initialisation under that seed) or a path to a state_dict.
    """
    file_sha = ""
    if spec.weights == "imagenet":
        model = _load_imagenet(spec)
    elif spec.weights.startswith("random:"):
        match = re.fullmatch(r"random:(\d+)", spec.weights)
        if not match:
            raise UserError(f"weights {spec.weights!r}: expected random:SEED with an integer SEED")
        torch.manual_seed(int(match.group(1)))
        model = _architecture(spec)
    else:
        model, file_sha = _load_path(spec)
    model.eval().requires_grad_(False)
    record = {
        "weights": spec.weights,
        "weights_sha256": state_dict_sha256(model),
        "weights_file_sha256": file_sha,
        "imagenet_v1": spec.weights == "imagenet"
        or file_sha.startswith(IMAGENET_FILE_SHA256_PREFIX.get(spec.arch, "-")),
    }
    return model, record


# ---------------------------------------------------------------- blocks and taps


def blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Blocks in forward order, named ``"L.i"``."""
    named = {}
    for stage in range(1, 5):
        for index, block in enumerate(getattr(model, f"layer{stage}")):
            named[f"{stage}.{index}"] = block
    return named


def last_bn_conv(block: nn.Module) -> tuple[nn.BatchNorm2d, nn.Conv2d]:
    """The block's last BN and conv, which make the summand B: bn2/conv2, or bn3/conv3 of a Bottleneck."""
    if isinstance(block, Bottleneck):
        return block.bn3, block.conv3
    return block.bn2, block.conv2


def block_widths(model: nn.Module) -> dict[str, int]:
    """Channels of every block's taps: its last BN's width (I and O have the same)."""
    return {name: last_bn_conv(block)[0].num_features for name, block in blocks(model).items()}


def check_taps(model: nn.Module, wanted: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    known = blocks(model)
    wanted = list(wanted)
    for block, tap in wanted:
        if block not in known:
            raise UserError(f"unknown block {block!r}; this model has blocks {', '.join(known)}")
        if tap not in TAPS:
            raise UserError(f"unknown tap {tap!r}; taps are I, B, O")
    return wanted


def same_tensor(model: nn.Module, block: str, tap: str) -> tuple[str, str]:
    """The canonical (block, tap) holding this tap's tensor: ``I`` of a simple block is ``O`` before it."""
    names = list(blocks(model))
    position = names.index(block)
    if tap == "I" and position > 0 and blocks(model)[block].downsample is None:
        return names[position - 1], "O"
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


def _summand(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block branch up to its last BN, out of place."""
    out = F.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):  # its middle conv; the last BN and conv follow in both kinds
        out = F.relu(block.bn2(block.conv2(out)))
    bn, conv = last_bn_conv(block)
    return bn(conv(out))


class _Done(Exception):
    """Raised internally to stop the forward once every requested tap is read."""


def _stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.maxpool(F.relu(model.bn1(model.conv1(x))))


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
    last requested tap and ``logits`` is None. ``edit_output[block]`` replaces the block's pre-ReLU
    ``O`` map before its ReLU (used for ablation); it may return a larger batch, such as one copy of the
    batch per ablation condition, and the rest of the forward runs on that. ``aliased=True`` reads ``B`` and the pre-ReLU taps
    as the post-ReLU block output, as a by-reference hook does (reference compatibility only).
    """
    wanted = set(check_taps(model, taps))
    values: dict[tuple[str, str], torch.Tensor] = {}
    edit_output = edit_output or {}

    def keep(block: str, tap: str, tensor: torch.Tensor) -> None:
        if (block, tap) in wanted:
            # A clone, so the full map is freed once the forward moves on.
            values[(block, tap)] = center_of(tensor).clone() if center else tensor
            if stop and len(values) == len(wanted):
                raise _Done

    try:
        x = _stem(model, x)
        previous_sum = None
        for name, block in blocks(model).items():
            if block.downsample is not None:
                input_summand = identity = block.downsample(x)
            else:
                identity = x
                input_summand = x if previous_sum is None else previous_sum
            summand = _summand(block, x)
            output = summand + identity
            if name in edit_output:
                output = edit_output[name](output)
            x = F.relu(output)
            if aliased:
                keep(name, "I", input_summand if block.downsample is not None else identity)
                keep(name, "B", x)
                keep(name, "O", x)
            else:
                keep(name, "I", input_summand)
                keep(name, "B", summand)
                keep(name, "O", output)
            previous_sum = output
        logits = model.fc(torch.flatten(model.avgpool(x), 1))
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
    names = list(blocks(model))
    wanted = [(b, t) for b in names for t in TAPS]
    with torch.no_grad():
        values, _ = run(model, torch.zeros(1, 3, image_size, image_size), wanted)
    infos = []
    for block, tap in wanted:
        _, channels, height, width = values[(block, tap)].shape
        canonical = same_tensor(model, block, tap)
        same_as = "" if canonical == (block, tap) else f"{canonical[0]}:{canonical[1]}"
        infos.append(TapInfo(block, tap, channels, height, width, same_as))
    return infos
