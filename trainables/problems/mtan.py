"""SegNet + MTAN (Liu et al., CVPR 2019, "End-to-End Multi-Task Learning with Attention"): the
NYUv2 model of `000` Table 2, Nash-MTL and CAGrad.

lorenmt/mtan ``im2im_pred/model_segnet_mtan.py``: the shared SegNet (as the "split" model,
``nyuv2.SegNetEncoderDecoder``) and, per task, soft attention masks over its features: at each
of the five encoder stages, a mask a = att([shared pre-conv feature, previous task feature]) in
(0, 1) multiplies the stage's output, and a shared 3x3 block (``encoder_block_att``) plus
max-pooling carries the task feature on; the decoder does the same with bilinear upsampling
(``decoder_block_att``) against the unpooled and the decoded shared features. Each task's last
decoder feature goes through its ``pred_task`` (3x3 conv, 1x1 conv).

In this trainer a model is a shared encoder (z) plus one head per task. Here z packs the 20
shared feature maps the attention modules read (each stage's pre-conv and output feature, in
the encoder and the decoder) into one (N, D) tensor; each task head unpacks it (views, no
copy) and runs its attention branch. The ``encoder_block_att`` / ``decoder_block_att`` blocks
are shared by the tasks (as in MTAN), so they are encoder parameters: parameter-level gradient
methods see them as shared; a feature-level method differentiates z, so they are trained
through the heads' combined loss, as every head parameter is.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainables.problems.nyuv2 import SegNetEncoderDecoder, conv_layer, init_like_mtan


def att_layer(cin: int, mid: int, cout: int) -> nn.Sequential:
    """MTAN's ``att_layer``: 1x1 conv, BN, ReLU, 1x1 conv, BN, sigmoid (a mask in (0, 1))."""
    return nn.Sequential(nn.Conv2d(cin, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
                         nn.Conv2d(mid, cout, 1), nn.BatchNorm2d(cout), nn.Sigmoid())


class MTANShared(SegNetEncoderDecoder):
    """The shared SegNet and the attention blocks every task uses; ``forward`` packs the features."""

    def __init__(self, filters: Sequence[int] = (64, 128, 256, 512, 512)) -> None:
        super().__init__(filters)
        f = [int(x) for x in filters]
        self.filters = f
        # model_segnet_mtan.py: encoder_block_att / decoder_block_att
        self.encoder_block_att = nn.ModuleList(
            [conv_layer(f[0], f[1])] + [conv_layer(f[i + 1], f[i + 2] if i < 3 else f[i + 1]) for i in range(4)])
        self.decoder_block_att = nn.ModuleList(
            [conv_layer(f[0], f[0])] + [conv_layer(f[i + 1], f[i] if i < 3 else f[i + 1]) for i in range(4)])
        init_like_mtan(self.encoder_block_att)
        init_like_mtan(self.decoder_block_att)
        #: (C, H, W) of each packed feature, in packing order, from the last forward.
        self.shapes: list[tuple[int, int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre, out, indices, sizes = [], [], [], []
        for i in range(5):
            pre.append(self.encoder_block[i](x))
            out.append(self.conv_block_enc[i](pre[-1]))
            sizes.append(out[-1].shape[-2:])
            x, idx = self.pool(out[-1])
            indices.append(idx)
        up, dec = [], []
        for j in range(5):  # j = 0 is the deepest decoder stage, as MTAN's g_upsampl / g_decoder
            i = 4 - j
            up.append(self.unpool(x, indices[i], output_size=sizes[i]))
            x = self.conv_block_dec[i](self.decoder_block[i](up[-1]))
            dec.append(x)
        features = pre + out + up + dec
        self.shapes = [tuple(t.shape[1:]) for t in features]
        return torch.cat([t.flatten(1) for t in features], dim=1)

    def unpack(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The 20 feature maps of ``z`` (views): encoder pre-conv x5, encoder out x5, unpooled x5, decoded x5."""
        maps, start = [], 0
        for c, h, w in self.shapes:
            size = c * h * w
            maps.append(z[:, start:start + size].view(z.shape[0], c, h, w))
            start += size
        return maps


class MTANTaskHead(nn.Module):
    """One task's attention branch over the shared features, then its prediction layers."""

    shared: MTANShared  # set in __init__, outside the module's registry

    def __init__(self, shared: MTANShared, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        f = shared.filters
        # not a submodule: the shared blocks belong to the encoder (registered once, there)
        object.__setattr__(self, "shared", shared)
        self.encoder_att = nn.ModuleList(
            [att_layer(f[0], f[0], f[0])] + [att_layer(2 * f[i + 1], f[i + 1], f[i + 1]) for i in range(4)])
        self.decoder_att = nn.ModuleList(
            [att_layer(2 * f[0], f[0], f[0])] + [att_layer(f[i + 1] + f[i], f[i], f[i]) for i in range(4)])
        layers: list[nn.Module] = [nn.Dropout2d(dropout)] if dropout > 0 else []
        self.pred = nn.Sequential(*layers, nn.Conv2d(f[0], f[0], 3, padding=1), nn.Conv2d(f[0], out_channels, 1))
        init_like_mtan(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        maps = self.shared.unpack(z)
        pre, out, up, dec = maps[0:5], maps[5:10], maps[10:15], maps[15:20]
        s = self.shared
        a = pre[0]  # the first attention takes the first pre-conv map alone
        for j in range(5):
            mask = self.encoder_att[j](a if j == 0 else torch.cat((pre[j], a), dim=1))
            a = F.max_pool2d(s.encoder_block_att[j](mask * out[j]), kernel_size=2, stride=2)
        for j in range(5):
            a = F.interpolate(a, size=up[j].shape[-2:], mode="bilinear", align_corners=True)
            a = s.decoder_block_att[4 - j](a)
            mask = self.decoder_att[4 - j](torch.cat((up[j], a), dim=1))
            a = mask * dec[j]
        return self.pred(a)
