"""Small models of the non-ResNet families, built from torchvision's own classes, for tests and tiny profiles.

Name one in a profile as ``arch = "repro.zoo:tiny_convnext"`` (the path every user model takes). Both take
32 px images and have 10 classes.
"""
from __future__ import annotations

from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.vision_transformer import VisionTransformer


def tiny_convnext() -> ConvNeXt:
    """Four stages of widths 16, 32, 64, 128 with 1, 1, 2, 1 blocks; maps of 8, 4, 2, 1 px at 32 px."""
    stages = [CNBlockConfig(16, 32, 1), CNBlockConfig(32, 64, 1), CNBlockConfig(64, 128, 2),
              CNBlockConfig(128, None, 1)]
    # layer_scale 1 rather than ConvNeXt's 1e-6, and the blocks' linear layers at a variance-keeping scale
    # rather than torchvision's std 0.02 (trained networks learn both): random blocks then add to the stream
    # about as much as it carries, so their channels spread over skip, mix and overwrite
    model = ConvNeXt(stages, layer_scale=1.0, num_classes=10)
    for module in model.features.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=module.in_features ** -0.5)
    return model


def tiny_vit() -> VisionTransformer:
    """Two encoder layers of width 32 on a 4 x 4 grid of 8 px patches (32 px images)."""
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=10)
    # torchvision zeroes the head for fine-tuning; random-weight logits must depend on the image
    nn.init.trunc_normal_(model.heads.head.weight, std=0.02)
    return model
