"""Tap adapters, one per family of residual blocks: what ``repro.model`` runs by hand for each family.

A family adapter knows, for the models of its family, the residual blocks in forward order under the
family's own labels, the three taps of every block with their true values, the stem (what runs before
the first block), the head (what makes logits after the last block), each block's channel count and
which taps are one tensor. Every tap is presented as a map ``[N, C, H, W]`` whose center is
``(H//2, W//2)``, so every stage reads all families alike. ``repro.model`` is the module callers import;
it picks a model's adapter (``family_of``) and dispatches to it.

* ``resnet`` (torchvision ``ResNet``: BasicBlock or Bottleneck, grouped and wide ones included). Blocks
  ``"L.i"`` = ``layerL[i]``. ``I`` is the downsample branch's output in a downsample block, otherwise the
  previous block's sum before its ReLU (for the first block, its input); ``B`` is the block's last BN
  output; ``O = B + identity`` before the ReLU. The identity added is ``relu(I)`` in a block without a
  downsample branch, so there ``O = relu(I) + B``.
* ``convnext`` (torchvision ``ConvNeXt``). Blocks ``"S.i"`` = block ``i`` of stage ``S``, the stages
  being the runs of CNBlocks in ``features`` numbered from 1 (``features[1, 3, 5, 7]`` in torchvision's
  models); the downsampling layers between stages are not residual. ``I`` is the block input, ``B`` the
  layer-scaled branch after stochastic depth (the identity in eval), ``O = I + B``.
* ``vit`` (torchvision ``VisionTransformer``). Each encoder layer ``L`` has two residual additions,
  ``"L.attn"`` (``I + dropout(self_attention(ln_1(I)))``) and ``"L.mlp"`` (``I + mlp(ln_2(I))``).
  Token taps are presented as maps ``[N, hidden_dim, h, w]`` of the patch tokens (the class token
  dropped, the ``h x w`` patch grid restored), so the center is the center patch token.

A user adapter subclasses ``Family`` (or one of the adapters here), is made with no arguments and is named
in a profile as ``model.family = "package.module:Class"``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.convnext import CNBlock
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.models.vision_transformer import EncoderBlock

from repro.errors import UserError

TAPS = ("I", "B", "O")

OEdit = Callable[[torch.Tensor], torch.Tensor]
Label = tuple[str, str]  # (block, tap)
Read = Callable[[str, "BlockTaps"], None]  # called once a block's taps are known; raising ends the forward


@dataclass(frozen=True)
class BlockTaps:
    """The three taps of one block, as maps ``[N, C, H, W]``."""

    I: torch.Tensor  # noqa: E741 - the taps' names
    B: torch.Tensor
    O: torch.Tensor  # noqa: E741

    def __getitem__(self, tap: str) -> torch.Tensor:
        return getattr(self, tap)


class Family:
    """One family's adapter. A subclass implements every method that raises ``NotImplementedError``.

    ``forward`` runs the whole model by hand: the stem, each block (its taps handed to ``read`` as soon
    as they are known, ``edits[block]`` applied to its ``O`` map before the forward goes on), the head.
    ``read`` raising an exception is how a forward is cut after a tap: nothing after that block runs.
    """

    name = "custom"
    block_classes: tuple[type, ...] = ()  # the classes that mark a model of this family (for inference)
    fixed_image_size = False  # True: the model runs at one image size only (every FZ must be cropped back)

    def blocks(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every block in forward order, by label; the module is the one whose parts compute the block."""
        raise NotImplementedError

    def width(self, model: nn.Module, block: str) -> int:
        """Channels of the block's taps (I, B and O share them)."""
        raise NotImplementedError

    def own_input(self, model: nn.Module, block: str) -> bool:
        """Whether the block's ``I`` is a tensor of its own, rather than the ``O`` of the block before it."""
        raise NotImplementedError

    def projects_input(self, model: nn.Module, block: str) -> bool:
        """Whether the block's ``I`` is the stream carried through a layer of its own (a ResNet's downsample
        branch, a ConvNeXt's downsampling layer): the papers' "downsample" blocks."""
        return self.own_input(model, block) and block != next(iter(self.blocks(model)))

    def weights_note(self) -> str:
        """Which weights ``weight_parts`` names, in a few words (stored with the metrics)."""
        return f"family {self.name} names no weights that make B"

    def stem(self, model: nn.Module, x: torch.Tensor) -> Any:
        """What runs before the first block: images to the stream the first block reads."""
        raise NotImplementedError

    def head(self, model: nn.Module, stream: Any) -> torch.Tensor:
        """What runs after the last block: the stream to logits."""
        raise NotImplementedError

    def forward(self, model: nn.Module, x: torch.Tensor, read: Read, edits: Mapping[str, OEdit],
                aliased: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def weight_parts(self, model: nn.Module, block: str) -> tuple[torch.Tensor, torch.Tensor] | str:
        """The per-channel scale and the weight ``[C, ...]`` that make the summand B (ResNet: the last BN's
        weight and the last conv's), or why this block has none."""
        return f"family {self.name} names no weights that make B"

    def check(self, model: nn.Module) -> None:
        """A one-line ``UserError`` when the model is not one this adapter can run."""
        self.blocks(model)


def unknown_block(label: str, module: nn.Module, family: Family) -> UserError:
    return UserError(f"block {label}: class {type(module).__name__} is not a known residual block of family "
                     f"{family.name}; declare model.family (an adapter module:Class for your own blocks)")


# ---------------------------------------------------------------- resnet


class ResNetFamily(Family):
    """torchvision ResNets and models built like them (``layer1`` .. of BasicBlocks or Bottlenecks)."""

    name = "resnet"
    block_classes = (BasicBlock, Bottleneck)

    def blocks(self, model):
        named, stage = {}, 1
        while hasattr(model, f"layer{stage}"):
            for index, block in enumerate(getattr(model, f"layer{stage}")):
                if not isinstance(block, self.block_classes):
                    raise unknown_block(f"{stage}.{index}", block, self)
                named[f"{stage}.{index}"] = block
            stage += 1
        if not named:
            raise UserError(f"{type(model).__name__} has no layer1 of residual blocks; it is not a resnet")
        return named

    def check(self, model):
        self.blocks(model)
        missing = [name for name in ("conv1", "bn1", "maxpool", "avgpool", "fc") if not hasattr(model, name)]
        if missing:
            raise UserError(f"{type(model).__name__} lacks {', '.join(missing)}, which a resnet's stem and head need")

    @staticmethod
    def last_bn_conv(block: nn.Module) -> tuple[nn.BatchNorm2d, nn.Conv2d]:
        if isinstance(block, Bottleneck):
            return block.bn3, block.conv3
        return block.bn2, block.conv2

    def width(self, model, block):
        return self.last_bn_conv(self.blocks(model)[block])[0].num_features

    def own_input(self, model, block):
        names = list(self.blocks(model))
        return names.index(block) == 0 or self.blocks(model)[block].downsample is not None

    def projects_input(self, model, block):
        return self.blocks(model)[block].downsample is not None

    def weight_parts(self, model, block):
        bn, conv = self.last_bn_conv(self.blocks(model)[block])
        return bn.weight, conv.weight

    def weights_note(self):
        return "bn2/conv2 of a BasicBlock; bn3/conv3 of a Bottleneck"

    def stem(self, model, x):
        return model.maxpool(F.relu(model.bn1(model.conv1(x))))

    def head(self, model, stream):
        return model.fc(torch.flatten(model.avgpool(stream), 1))

    def summand(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The block branch up to its last BN, out of place."""
        out = F.relu(block.bn1(block.conv1(x)))
        if isinstance(block, Bottleneck):  # its middle conv; the last BN and conv follow in both kinds
            out = F.relu(block.bn2(block.conv2(out)))
        bn, conv = self.last_bn_conv(block)
        return bn(conv(out))

    def forward(self, model, x, read, edits, aliased=False):
        x = self.stem(model, x)
        previous_sum = None
        for name, block in self.blocks(model).items():
            if block.downsample is not None:
                input_summand = identity = block.downsample(x)
            else:
                identity = x
                input_summand = x if previous_sum is None else previous_sum
            summand = self.summand(block, x)
            output = summand + identity
            if name in edits:
                output = edits[name](output)
            x = F.relu(output)
            if aliased:  # what a by-reference hook sees after torchvision's in-place ReLU
                read(name, BlockTaps(input_summand if block.downsample is not None else identity, x, x))
            else:
                read(name, BlockTaps(input_summand, summand, output))
            previous_sum = output
        return self.head(model, x)


# ---------------------------------------------------------------- convnext


class ConvNeXtFamily(Family):
    """torchvision ConvNeXt: ``features`` = stem, then stages of CNBlocks with downsampling layers between."""

    name = "convnext"
    block_classes = (CNBlock,)

    def stages(self, model: nn.Module) -> list[int]:
        """Indices into ``model.features`` of the stages (the Sequentials of CNBlocks)."""
        found = [index for index, part in enumerate(model.features)
                 if isinstance(part, nn.Sequential) and len(part) and isinstance(part[0], self.block_classes)]
        if not found:
            raise UserError(f"{type(model).__name__}.features holds no stage of CNBlocks; it is not a convnext")
        return found

    def blocks(self, model):
        named = {}
        for stage, index in enumerate(self.stages(model), start=1):
            for position, block in enumerate(model.features[index]):
                if not isinstance(block, self.block_classes):
                    raise unknown_block(f"{stage}.{position}", block, self)
                named[f"{stage}.{position}"] = block
        return named

    def check(self, model):
        if not isinstance(getattr(model, "features", None), nn.Sequential):
            raise UserError(f"{type(model).__name__} has no features Sequential; it is not a convnext")
        self.blocks(model)
        if self.stages(model)[0] == 0 or not hasattr(model, "avgpool") or not hasattr(model, "classifier"):
            raise UserError(f"{type(model).__name__} lacks a stem (features[0]), avgpool or classifier")

    def width(self, model, block):
        return self.blocks(model)[block].layer_scale.shape[0]

    def own_input(self, model, block):
        return block.endswith(".0")  # a stage's first block reads the stem or a downsampling layer

    def weight_parts(self, model, block):
        module = self.blocks(model)[block]
        return module.layer_scale.flatten(), module.block[-2].weight  # the last Linear before the Permute

    def weights_note(self):
        # The layer scale multiplies B channel by channel as a ResNet's last BN weight does, and the last
        # Linear (pointwise conv) writes B's channels as its last conv does.
        return "bn2 = the layer scale (gamma); conv2 = the last Linear of the block (block[5])"

    def stem(self, model, x):
        return model.features[: self.stages(model)[0]](x)

    def head(self, model, stream):
        return model.classifier(model.avgpool(stream))

    @staticmethod
    def summand(block: CNBlock, x: torch.Tensor) -> torch.Tensor:
        return block.stochastic_depth(block.layer_scale * block.block(x))

    def forward(self, model, x, read, edits, aliased=False):
        stages = self.stages(model)
        x = self.stem(model, x)
        for stage, index in enumerate(stages, start=1):
            x = model.features[stages[stage - 2] + 1: index](x) if stage > 1 else x  # the downsampling between
            for position, block in enumerate(model.features[index]):
                name = f"{stage}.{position}"
                summand = self.summand(block, x)
                output = x + summand
                if name in edits:
                    output = edits[name](output)
                read(name, BlockTaps(x, summand, output))
                x = output
        x = model.features[stages[-1] + 1:](x)  # anything after the last stage (nothing in torchvision's)
        return self.head(model, x)


# ---------------------------------------------------------------- vit


class ViTFamily(Family):
    """torchvision VisionTransformer: two residual additions per encoder layer, taps as patch-token maps."""

    name = "vit"
    block_classes = (EncoderBlock,)
    fixed_image_size = True  # the positional embedding has one token per patch of its own image size
    parts = ("attn", "mlp")

    def layers(self, model: nn.Module) -> list[nn.Module]:
        layers = list(model.encoder.layers)
        for index, layer in enumerate(layers):
            if not isinstance(layer, self.block_classes):
                raise unknown_block(f"{index}.attn", layer, self)
        return layers

    def blocks(self, model):
        return {f"{index}.{part}": layer for index, layer in enumerate(self.layers(model)) for part in self.parts}

    def check(self, model):
        missing = [name for name in ("conv_proj", "class_token", "encoder", "heads", "patch_size")
                   if not hasattr(model, name)]
        if missing:
            raise UserError(f"{type(model).__name__} lacks {', '.join(missing)}, which a vit's stem and head need")
        self.blocks(model)

    def width(self, model, block):
        return self.blocks(model)[block].ln_1.normalized_shape[0]

    def own_input(self, model, block):
        return block == "0.attn"

    def weight_parts(self, model, block):
        return (f"block {block}: a vit's summands have no per-channel scale (the last linear of B is "
                f"{'self_attention.out_proj' if block.endswith('attn') else 'mlp[3]'})")

    def weights_note(self):
        return "none: a vit's summands have no per-channel scale"

    def stem(self, model, x):
        """Patch embedding, class token, positional embedding and the encoder's dropout."""
        n, _, height, width = x.shape
        side = math.isqrt(model.encoder.pos_embedding.shape[1] - 1) * model.patch_size  # one token per patch
        if (height, width) != (side, side):
            raise UserError(f"this vit takes {side} x {side} px images, not {height} x {width}")
        tokens = model.conv_proj(x).reshape(n, model.hidden_dim, -1).permute(0, 2, 1)
        tokens = torch.cat([model.class_token.expand(n, -1, -1), tokens], dim=1)
        return model.encoder.dropout(tokens + model.encoder.pos_embedding)

    def head(self, model, stream):
        return model.heads(model.encoder.ln(stream)[:, 0])

    @staticmethod
    def as_map(tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``[N, 1 + h*w, C]`` as the map ``[N, C, h, w]`` of the patch tokens (a square grid)."""
        n, length, channels = tokens.shape
        side = math.isqrt(length - 1)
        return tokens[:, 1:].transpose(1, 2).reshape(n, channels, side, side)

    @staticmethod
    def as_tokens(edited: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """An edited patch map ``[M, C, h, w]`` back to tokens, with the class tokens of ``tokens``.

        A larger batch ``M = K * N`` is K copies of the batch (row ``k * N + i`` is image i), as the
        ablation's fan-out makes; each copy keeps its image's class token.
        """
        copies = edited.shape[0] // tokens.shape[0]
        class_tokens = tokens[:, :1].repeat(copies, 1, 1)
        return torch.cat([class_tokens, edited.flatten(2).transpose(1, 2)], dim=1)

    def residual(self, name: str, stream: torch.Tensor, summand: torch.Tensor, read: Read,
                 edits: Mapping[str, OEdit]) -> torch.Tensor:
        output = stream + summand
        if name in edits:
            output = self.as_tokens(edits[name](self.as_map(output)), output)
        read(name, BlockTaps(self.as_map(stream), self.as_map(summand), self.as_map(output)))
        return output

    def forward(self, model, x, read, edits, aliased=False):
        stream = self.stem(model, x)
        for index, layer in enumerate(self.layers(model)):
            normed = layer.ln_1(stream)
            attended, _ = layer.self_attention(normed, normed, normed, need_weights=False)
            stream = self.residual(f"{index}.attn", stream, layer.dropout(attended), read, edits)
            stream = self.residual(f"{index}.mlp", stream, layer.mlp(layer.ln_2(stream)), read, edits)
        return self.head(model, stream)


FAMILIES: dict[str, Family] = {family.name: family for family in (ResNetFamily(), ConvNeXtFamily(), ViTFamily())}
