"""The example's model factory: `model: {factory: "byo_net:make_net", width: ..., depth: ...}`.

gce-search calls it with the data's shape and class count, then the section's other keys as keywords:
make_net(in_channels, num_classes, image_size, **keywords). Feature vectors N×D arrive as D channels of 1×1.
"""
from __future__ import annotations

from torch import nn


def make_net(in_channels: int, num_classes: int, image_size: int, width: int = 64, depth: int = 2,
             dropout: float = 0.0) -> nn.Module:
    """A fully connected net: `depth` hidden layers of `width` GELU units, LayerNorm after each."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = in_channels * image_size * image_size
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.LayerNorm(width), nn.GELU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
