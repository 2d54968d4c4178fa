"""A model as research code writes it: timm's old ``drop_path`` pasted into its
own module, and four kinds of residual blocks -- pre-norm, ConvNeXt-style
(``shortcut = x``, several statements, layer scale), a BatchNorm branch, and
a branch that subtracts the batch mean. The last two mix samples: they must
never run in skip mode."""

from __future__ import annotations

import torch
from torch import nn


def drop_path(x, drop_prob: float = 0.0, training: bool = False):
    """Drop paths (Stochastic Depth) per sample (when applied in main path of residual blocks)."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # work with diff dim tensors, not just 2D ConvNets
    random_tensor = keep_prob + torch.rand(shape, dtype=x.dtype, device=x.device)
    random_tensor.floor_()  # binarize
    output = x.div(keep_prob) * random_tensor
    return output


class DropPath(nn.Module):
    """Drop paths (Stochastic Depth) per sample  (when applied in main path of residual blocks)."""

    def __init__(self, drop_prob=None):
        super(DropPath, self).__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)


class PreNormBlock(nn.Module):
    def __init__(self, dim, drop_path_rate):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()

    def forward(self, x):
        x = x + self.drop_path(self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x)))))
        return x


class ConvNeXtStyleBlock(nn.Module):
    def __init__(self, dim, drop_path_rate, layer_scale_init_value=0.5):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(2 * dim, dim)
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0.0 else nn.Identity()

    def forward(self, x):
        input = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)

        x = input + self.drop_path(x)
        return x


class BatchNormBlock(nn.Module):
    def __init__(self, dim, drop_path_rate):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.bn = nn.BatchNorm2d(dim)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x):
        return x + self.drop_path(torch.relu(self.bn(self.conv(x))))


class BatchMeanBlock(nn.Module):
    """Centres its branch on the batch mean: the output of a sample depends on the others."""

    def __init__(self, dim, drop_path_rate):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x):
        h = self.fc(x)
        h = h - h.mean(dim=0, keepdim=True)
        return x + self.drop_path(h)


class ResearchNet(nn.Module):
    BLOCKS = {"convnext": "stage1.0", "batchnorm": "stage1.1", "prenorm": "stage2.0", "batch_mean": "stage2.1"}

    def __init__(self, drop_path_rate=0.5, dim=8, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.stage1 = nn.Sequential(ConvNeXtStyleBlock(dim, drop_path_rate), BatchNormBlock(dim, drop_path_rate))
        self.stage2 = nn.Sequential(PreNormBlock(dim, drop_path_rate), BatchMeanBlock(dim, drop_path_rate))
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.stage1(self.stem(x))
        x = self.stage2(x.flatten(2).transpose(1, 2))
        return self.head(x.mean(1))
