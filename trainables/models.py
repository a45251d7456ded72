"""Model registry: every network is built from (in_channels, num_classes, image_size, **params).

The `model:` section of a trial config is `{name: <MODELS key>, **params}`; the params are the builder's keyword
arguments, declared with their valid ranges in trainables.catalog's MODELS (trainables.config validates them from
there); each builder here is attached to its entry with `@MODELS.implements(name)`.
A section may instead name a model from outside the catalog (trainables.external checks the names):
`name: torchvision.<builder>` (any torchvision classification builder, untrained), `name: timm.<model>`
(timm.create_model, untrained; timm is the optional extra `gce-search[timm]`) or `factory: "module:function"`
(your own `function(in_channels, num_classes, image_size, **params) -> nn.Module`); their other keys are the
builder's keyword arguments. build_external builds them.
The CIFAR-style networks keep the 3×3 stride-1 stem of the calibration papers' code (Mukhoti et al. 2020) instead
of ImageNet's 7×7/stride-2 stem and max-pool, and end in a global average pool, so one definition serves 8×8 to
64×64 inputs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gce_search.trainables import external
from gce_search.trainables.catalog import MODELS
from gce_search.trainables.external import is_external


def build_model(model_cfg: dict, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build the network a trial config's `model:` section names, for the given input shape and class count."""
    if is_external(model_cfg):
        return build_external(model_cfg, in_channels, num_classes, image_size)
    if not isinstance(model_cfg, dict) or "name" not in model_cfg:
        raise ValueError(f"model: expected a mapping with a 'name' key, got {model_cfg!r}; "
                         f"valid names: {', '.join(MODELS.names())}, torchvision.<builder>, timm.<model>, or a "
                         f"'factory' key")
    info = MODELS.get(model_cfg["name"])
    kwargs = {}
    for key, value in model_cfg.items():
        if key == "name":
            continue
        if key not in info.params:
            valid = ", ".join(info.params) if info.params else "none"
            raise ValueError(f"model.{key}: not a parameter of model {info.name!r}; valid: {valid}")
        kwargs[key] = info.params[key].check(f"model.{key}", value)
    _check_shape_args(in_channels, num_classes, image_size)
    if image_size < info.min_image_size:
        raise ValueError(f"model.name: {info.name!r} needs images of at least {info.min_image_size}×"
                         f"{info.min_image_size}, the data are {image_size}×{image_size}; valid: a model for "
                         f"small images, e.g. mlp or small_cnn")
    return info.impl(in_channels, num_classes, image_size, **kwargs)


# ---------------------------------------------------------------------------------------------- outside the catalog


def _check_shape_args(in_channels: int, num_classes: int, image_size: int) -> None:
    for arg, value in (("in_channels", in_channels), ("num_classes", num_classes), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"build_model: {arg} got {value!r}; valid: a positive integer")


def _external_kwargs(model_cfg: dict) -> dict:
    problems = external.section_problems(model_cfg)
    if problems:
        raise ValueError("; ".join(problems))
    return {k: v for k, v in model_cfg.items() if k not in ("name", "factory")}


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d] | None:
    """(parent module, attribute name, the conv) of the first Conv2d in the model's module order: the stem."""
    for parent in model.modules():
        for attr, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, attr, child
    return None


def adapt_in_channels(model: nn.Module, in_channels: int, name: str) -> nn.Module:
    """Replace the first conv of a 3-channel network by one taking `in_channels` (same shape otherwise, freshly
    initialised as torch initialises a Conv2d)."""
    found = _first_conv(model)
    if found is None:
        raise ValueError(f"model.name: {name!r} has no Conv2d to take {in_channels}-channel images; valid: a model "
                         f"whose stem is a convolution, or 3-channel data")
    parent, attr, conv = found
    if conv.in_channels == in_channels:
        return model
    if conv.groups != 1:
        raise ValueError(f"model.name: {name!r} starts with a grouped convolution, which cannot take "
                         f"{in_channels}-channel images; valid: 3-channel data or another model")
    new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                    dilation=conv.dilation, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    setattr(parent, attr, new)
    return model


def _shape_keywords(cls_keywords: dict, kwargs: dict, image_size: int) -> dict:
    """Keywords a library model needs for small inputs that the user did not set: its input size (ViTs and the
    like are built for 224×224) and no auxiliary heads (the training step needs one logits tensor)."""
    extra = {}
    for key in ("image_size", "img_size"):
        if key in cls_keywords and key not in kwargs:
            extra[key] = image_size
    if "aux_logits" in cls_keywords and "aux_logits" not in kwargs:
        extra["aux_logits"] = False
    return extra


def build_external(model_cfg: dict, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """A torchvision builder (weights=None, num_classes; the first conv replaced when in_channels != 3), a timm
    model (pretrained=False, num_classes, in_chans) or a factory (in_channels, num_classes, image_size, **params),
    with the section's other keys as keyword arguments."""
    _check_shape_args(in_channels, num_classes, image_size)
    kwargs = _external_kwargs(model_cfg)
    if "factory" in model_cfg:
        fn = external.load_factory(model_cfg["factory"])
        model = fn(in_channels, num_classes, image_size, **kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"model.factory: {model_cfg['factory']!r} returned a {type(model).__name__}; valid: a "
                             f"function returning a torch.nn.Module")
        return model
    name = model_cfg["name"]
    accepted, _ = external.keywords(model_cfg)
    kwargs.update(_shape_keywords(accepted, kwargs, image_size))
    if name.startswith(external.TORCHVISION):
        builder = external.torchvision_builder(name)
        model = builder(weights=None, num_classes=num_classes, **kwargs)
        return adapt_in_channels(model, in_channels, name) if in_channels != 3 else model
    import timm

    return timm.create_model(name[len(external.TIMM):], pretrained=False, num_classes=num_classes,
                             in_chans=in_channels, **kwargs)


# ------------------------------------------------------------------------------------------------------------- mlp


@MODELS.implements("mlp")
def mlp(in_channels: int, num_classes: int, image_size: int, width: int = 256, depth: int = 2,
        dropout: float = 0.0) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten()]
    features = in_channels * image_size * image_size
    for _ in range(int(depth)):
        layers += [nn.Dropout(dropout), nn.Linear(features, int(width)), nn.ReLU(inplace=True)]
        features = int(width)
    layers += [nn.Dropout(dropout), nn.Linear(features, num_classes)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------------------------------- small_cnn


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@MODELS.implements("small_cnn")
def small_cnn(in_channels: int, num_classes: int, image_size: int, width: int = 32, hidden: int = 128,
              dropout: float = 0.0) -> nn.Module:
    w = int(width)
    side = image_size // 4
    return nn.Sequential(
        *_conv_bn_relu(in_channels, w), *_conv_bn_relu(w, w), nn.MaxPool2d(2),
        *_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * w * side * side, int(hidden)), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(int(hidden), num_classes),
    )


# --------------------------------------------------------------------------------------------------------- gap_cnn


@MODELS.implements("gap_cnn")
def gap_cnn(in_channels: int, num_classes: int, image_size: int, width: int = 32) -> nn.Module:
    """conv3×3(w)-BN-ReLU-maxpool, conv3×3(2w)-BN-ReLU-maxpool, conv3×3(4w)-BN-ReLU, global average pool, linear;
    bias-free convolutions with padding 1. w = 32 on 1×28×28 and 10 classes: 94,186 parameters."""
    w = int(width)
    return nn.Sequential(
        *_conv_bn_relu(in_channels, w), nn.MaxPool2d(2),
        *_conv_bn_relu(w, 2 * w), nn.MaxPool2d(2),
        *_conv_bn_relu(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes),
    )


# -------------------------------------------------------------------------------------------------------- fast_cnn


class _ConvGroup(nn.Sequential):
    # airbench's block: conv → max-pool → BN → GELU → conv → BN → GELU (pooling before the second conv halves its
    # cost). ceil_mode keeps odd sizes (7 → 4) from shrinking to zero on small inputs.
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.MaxPool2d(2, ceil_mode=True),
            nn.BatchNorm2d(cout), nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU(),
        )


class FastCNN(nn.Module):
    """The airbench94 network (Jordan 2024) without its data-dependent whitening initialisation.

    Widths (w, 4w, 4w) after a 3×3 stem, global max-pool, bias-free linear head whose output is multiplied by
    `logit_scale` (airbench uses 1/9: it sets the starting temperature of the logits, which matters for
    calibration and is therefore a parameter here).
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, logit_scale: float = 1 / 9):
        super().__init__()
        w = int(width)
        stem_out = max(1, w // 2)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem_out, 3, padding=1, bias=False), nn.GELU())
        self.groups = nn.Sequential(_ConvGroup(stem_out, w), _ConvGroup(w, 4 * w), _ConvGroup(4 * w, 4 * w))
        self.head = nn.Linear(4 * w, num_classes, bias=False)
        self.logit_scale = float(logit_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.groups(self.stem(x))
        x = torch.amax(x, dim=(2, 3))
        return self.head(x) * self.logit_scale


@MODELS.implements("fast_cnn")
def fast_cnn(in_channels: int, num_classes: int, image_size: int, width: int = 64,
             logit_scale: float = 1 / 9) -> nn.Module:
    return FastCNN(in_channels, num_classes, width, logit_scale)


# ---------------------------------------------------------------------------------------------------- CIFAR ResNets


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: str = "conv"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != planes:
            if shortcut == "pad":
                self.shortcut = _PadShortcut(planes - cin, stride)
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride=stride, bias=False),
                                              nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _PadShortcut(nn.Module):
    # He et al. 2016, CIFAR experiments, option A: subsample and zero-pad the new channels, no parameters.
    def __init__(self, extra_channels: int, stride: int):
        super().__init__()
        self.extra, self.stride = extra_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        half = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra - half))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: str = "conv"):
        super().__init__()
        out = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes), nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != out:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with a 3×3 stride-1 stem and no max-pool; stage s has widths[s] planes and stride 2 after stage 0.

    The stem has widths[0] channels unless stem_width says otherwise (WRN's stem is narrower than its stages).
    """

    def __init__(self, block: type, blocks: list[int], widths: list[int], in_channels: int, num_classes: int,
                 shortcut: str = "conv", stem_width: int | None = None):
        super().__init__()
        cin = widths[0] if stem_width is None else stem_width
        self.stem = nn.Sequential(nn.Conv2d(in_channels, cin, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        for stage, (n, planes) in enumerate(zip(blocks, widths)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(block(cin, planes, stride, shortcut))
                cin = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))




@MODELS.implements("resnet18")
def resnet18(in_channels: int, num_classes: int, image_size: int, width: int = 64) -> nn.Module:
    return CifarResNet(BasicBlock, [2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width], in_channels, num_classes)


@MODELS.implements("resnet34")
def resnet34(in_channels: int, num_classes: int, image_size: int, width: int = 64) -> nn.Module:
    return CifarResNet(BasicBlock, [3, 4, 6, 3], [width, 2 * width, 4 * width, 8 * width], in_channels, num_classes)


@MODELS.implements("resnet50")
def resnet50(in_channels: int, num_classes: int, image_size: int, width: int = 64) -> nn.Module:
    return CifarResNet(Bottleneck, [3, 4, 6, 3], [width, 2 * width, 4 * width, 8 * width], in_channels, num_classes)


@MODELS.implements("resnet110")
def resnet110(in_channels: int, num_classes: int, image_size: int, width: int = 16) -> nn.Module:
    return CifarResNet(BasicBlock, [18, 18, 18], [width, 2 * width, 4 * width], in_channels, num_classes,
                       shortcut="pad")


# ------------------------------------------------------------------------------------------------------ WRN-26-10


@MODELS.implements("wrn_26_10")
def wrn_26_10(in_channels: int, num_classes: int, image_size: int, widen: int = 10) -> nn.Module:
    k = int(widen)
    # Mukhoti et al.'s wide_resnet_cifar(depth=26, width=10) counts depth as 6n+2 with basic blocks, not
    # Zagoruyko & Komodakis' 6n+4 pre-activation blocks: follow the code the published numbers came from.
    return CifarResNet(BasicBlock, [4, 4, 4], [16 * k, 32 * k, 64 * k], in_channels, num_classes, stem_width=16)


# ---------------------------------------------------------------------------------------------------- DenseNet-121


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, padding=1,
                                                                         bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.body(x), x], 1)


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al. 2017) for small images: 3×3 stem of 2·growth channels, average-pool transitions."""

    def __init__(self, blocks: list[int], growth: int, in_channels: int, num_classes: int, reduction: float = 0.5):
        super().__init__()
        channels = 2 * growth
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(_DenseLayer(channels, growth))
                channels += growth
            if i < len(blocks) - 1:
                out = int(channels * reduction)
                layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, out, 1, bias=False),
                           nn.AvgPool2d(2)]
                channels = out
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


@MODELS.implements("densenet121")
def densenet121(in_channels: int, num_classes: int, image_size: int, growth_rate: int = 32) -> nn.Module:
    return DenseNet([6, 12, 24, 16], int(growth_rate), in_channels, num_classes)
