"""Shared encoder and task heads for dense (per-pixel) prediction: Cityscapes, NYUv2.

The encoder is a torchvision ResNet with its last two stages dilated instead of strided
(``replace_stride_with_dilation=[False, True, True]``: output stride 8, the DeepLabv3
set-up; ResNet-18/34 dilated by hand as MGDA's ``ResnetDilated``), returning the layer-4
feature map as the shared representation z. Each head is
torchvision's DeepLabv3 head (ASPP + 3x3 conv + 1x1 classifier) followed by bilinear
upsampling to the input resolution, so it takes only z (what feature-level gradient methods
require). This is `002` §3.3's "ResNet-50 shared encoder + DeepLab decoder" (after Kurin et
al. 2022 and Sener & Koltun 2018, whose Cityscapes model is a dilated ResNet encoder with
per-task decoders); R18 swaps in ResNet-18. The `002` authors' code
(Gabriel-SGama/UnitScal_vs_SMTOs, ``models/cityscapes.py``, ``model_selector.py``) builds
the same: ``ResnetDilated`` + a DeepLabv3 head per task, ASPP dropout ``--p 0``, and
ImageNet-pretrained encoders.

ImageNet weights are opt-in here (``pretrained=True``; torchvision downloads them on first
use), never the default, so nothing is fetched unless asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights, resnet18, resnet34, resnet50
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

from trainables.errors import ConfigError

#: Backbone name -> (torchvision builder, ImageNet weights, channels of layer 4).
BACKBONES = {
    "resnet18": (resnet18, ResNet18_Weights.IMAGENET1K_V1, 512),
    "resnet34": (resnet34, ResNet34_Weights.IMAGENET1K_V1, 512),
    "resnet50": (resnet50, ResNet50_Weights.IMAGENET1K_V1, 2048),
}
#: ImageNet mean and std (RGB, inputs in [0, 1]) that the torchvision weights expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: DeepLabv3's atrous rates at output stride 8 (Chen et al. 2017 §4.1: (6, 12, 18) doubled).
ASPP_RATES = (12, 24, 36)


class ResNetEncoder(nn.Module):
    """A dilated ResNet trunk (stem + layers 1-4, no pooling / fc): image -> feature map z.

    ``forward`` maps (N, 3, H, W) to (N, C, ceil(H/s), ceil(W/s)) with C = ``out_channels``
    and s = ``output_stride`` (8 when dilated, 32 otherwise).
    """

    def __init__(self, backbone: str = "resnet50", pretrained: bool = False, dilated: bool = True) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {backbone!r} (known: {', '.join(BACKBONES)})")
        build, weights, channels = BACKBONES[backbone]
        if pretrained:
            _check_weights_reachable(weights)
        if dilated and backbone in ("resnet18", "resnet34"):
            # torchvision's BasicBlock refuses dilation > 1; dilate its 3x3 convs by hand.
            net = build(weights=weights if pretrained else None)
            _dilate_basic_layers(net)
        else:
            net = build(weights=weights if pretrained else None, replace_stride_with_dilation=[False, dilated, dilated])
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.out_channels = channels
        self.output_stride = 8 if dilated else 32
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def stages(self) -> list[nn.Module]:
        """The trunk as the chain ``forward`` runs (``trainables.gramian`` walks it back stage
        by stage; the Sequential stem and layers expand into their modules and blocks)."""
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]


def _dilate_basic_layers(net: nn.Module) -> None:
    """Turn the strides of layers 3 and 4 of a BasicBlock ResNet into dilation 2 and 4.

    MGDA's ``ResnetDilated._nostride_dilate`` (isl-org/MultiObjectiveOptimization, used by
    the `002` authors for ResNet-18): every 3x3 conv of the stage gets dilation d, except
    the strided one, which loses its stride and gets d / 2; the strided 1x1 downsample loses
    its stride. (torchvision's own ``replace_stride_with_dilation`` does the same for
    Bottleneck ResNets but refuses BasicBlocks.)
    """
    for name, dilation in (("layer3", 2), ("layer4", 4)):
        for module in getattr(net, name).modules():
            if not isinstance(module, nn.Conv2d):
                continue
            if module.stride == (2, 2):
                module.stride = (1, 1)
                if module.kernel_size == (3, 3):
                    module.dilation = module.padding = (dilation // 2, dilation // 2)
            elif module.kernel_size == (3, 3):
                module.dilation = module.padding = (dilation, dilation)


def check_pretrained(backbone: str) -> None:
    """On the driver: a one-line ConfigError when ``backbone``'s ImageNet weights cannot be had."""
    _check_weights_reachable(BACKBONES[backbone][1])


def _check_weights_reachable(weights: Any) -> None:
    """Fail in one line, before any download, when ImageNet weights are asked for offline."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    offline = os.environ.get("SEARCHER_OFFLINE", "").lower() in {"1", "true", "yes"}
    if offline and not cached.is_file():
        raise ConfigError(
            f"pretrained=true needs {weights.url} in {cached.parent} (SEARCHER_OFFLINE is set); "
            "download it there, or train from scratch with --param pretrained=false"
        )


class DenseHead(nn.Module):
    """A DeepLabv3 head on z, upsampled (bilinear) to the input resolution.

    ``output_size`` (H, W) fixes the output resolution; without it the logits are scaled
    up by ``scale_factor`` (the encoder's output stride).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        output_size: Sequence[int] | None = None,
        scale_factor: int = 8,
        atrous_rates: Sequence[int] = ASPP_RATES,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.head = DeepLabHead(in_channels, out_channels, tuple(atrous_rates))
        # torchvision's ASPP ends in Dropout(0.5); make its p a hyperparameter.
        for module in self.head[0].project.modules():
            if isinstance(module, nn.Dropout):
                module.p = float(dropout)
        self.output_size = tuple(int(s) for s in output_size) if output_size is not None else None
        self.scale_factor = scale_factor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y = self.head(z)
        if self.output_size is not None:
            return F.interpolate(y, size=self.output_size, mode="bilinear", align_corners=False)
        return F.interpolate(y, scale_factor=self.scale_factor, mode="bilinear", align_corners=False)


def deeplab_head(
    encoder: ResNetEncoder,
    out_channels: int,
    output_size: Sequence[int] | None = None,
    dropout: float = 0.5,
    atrous_rates: Sequence[int] = ASPP_RATES,
) -> DenseHead:
    """A DeepLabv3 head matching ``encoder`` (its channels and output stride)."""
    return DenseHead(encoder.out_channels, out_channels, output_size, encoder.output_stride, atrous_rates, dropout)


def normalize_image(x: torch.Tensor) -> torch.Tensor:
    """RGB images in [0, 1], (..., 3, H, W) -> ImageNet-standardised (what the weights expect)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


__all__ = [
    "ASPP_RATES",
    "BACKBONES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DenseHead",
    "ResNetEncoder",
    "deeplab_head",
    "normalize_image",
]
