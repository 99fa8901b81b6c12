"""Users' models named as ``module:callable`` (tests put this folder on sys.path)."""
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.resnet import Bottleneck, ResNet

from repro.families import ConvNeXtFamily


def small_resnext() -> ResNet:
    """A one-block-per-stage ResNeXt: grouped 3x3 convs in Bottlenecks (as resnext50_32x4d, narrower)."""
    return ResNet(Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=8, num_classes=10)


def small_wide_resnet() -> ResNet:
    """A one-block-per-stage wide ResNet: Bottlenecks twice as wide inside (as wide_resnet50_2)."""
    return ResNet(Bottleneck, [1, 1, 1, 1], width_per_group=128, num_classes=10)


def plain_convnext() -> ConvNeXt:
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], layer_scale=0.5, num_classes=4)


def two_stage_convnext() -> ConvNeXt:
    """A user's own small ConvNeXt with the toy world's ten classes (the tiny pipeline runs it)."""
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], layer_scale=0.5, num_classes=10)


class MyBlock(nn.Module):
    """A residual block of the user's own: no adapter knows it."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)


class OwnBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(MyBlock(8), MyBlock(8))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.layer1(self.stem(x)).mean((2, 3)))


def own_blocks() -> OwnBlocks:
    return OwnBlocks()


def not_a_model():
    return "a string"


class RenamedConvNeXt(ConvNeXtFamily):
    """A user adapter: torchvision's ConvNeXt under another name."""

    name = "my-convnext"
