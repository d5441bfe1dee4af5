"""ResNet-50 (He et al. 2016) as a frozen feature extractor.

The module tree and parameter names follow torchvision's ``resnet50`` exactly
(``conv1``, ``bn1``, ``layer1``..``layer4`` made of Bottleneck blocks with
``conv1/bn1/conv2/bn2/conv3/bn3`` and ``downsample.0/.1``, then ``fc``), so ImageNet,
VGGFace2 or fine-tuned checkpoints saved from torchvision or timm load unchanged.
The stride of a down-sampling block sits on its 3x3 convolution ("ResNet v1.5"), as in
torchvision.  :meth:`ResNet50.forward` returns the 2048-d globally pooled features;
``fc`` is kept so that complete state dicts load, and :meth:`ResNet50.classify`
applies it.
"""

from __future__ import annotations

import torch
from torch import nn

FEATURES = 2048  # width of the pooled feature vector
_BLOCKS = (3, 4, 6, 3)  # Bottleneck blocks per stage of ResNet-50
_WIDTHS = (64, 128, 256, 512)  # inner width of each stage; the output is 4x wider
_EXPANSION = 4


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand, plus the shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * _EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 whose forward pass stops at the pooled 2048-d features.

    Parameters
    ----------
    num_classes : int, default 1000
        Outputs of ``fc`` (only used by :meth:`classify`; 1000 matches ImageNet
        checkpoints).
    """

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        for index, (blocks, width) in enumerate(zip(_BLOCKS, _WIDTHS, strict=True)):
            stride = 1 if index == 0 else 2
            layers = []
            for b in range(blocks):
                layers.append(Bottleneck(channels, width, stride if b == 0 else 1))
                channels = width * _EXPANSION
            setattr(self, f"layer{index + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(FEATURES, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so that "random" weights give well-scaled
        # activations rather than exploding ones.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, 2048) pooled features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, num_classes) logits of ``fc``."""
        return self.fc(self.forward(x))
