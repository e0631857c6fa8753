"""The image classifiers of Frankle & Carbin 2019: LeNet-300-100, Conv-2/4/6, VGG-19 and ResNet-20.

Every model names its output layer in the class attribute `output_layer`; `head` and transfer use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ticketx.task import TaskError

from .options import MODELS


@dataclass(frozen=True, kw_only=True)
class InputShape:
    """What a model needs to know about its data: image channels and size, and the number of classes."""

    channels: int
    height: int
    width: int
    classes: int


class LeNet300100(nn.Module):
    """LeNet-300-100: a fully connected 784-300-100-10 network with ReLU (Frankle & Carbin fig. 2)."""

    output_layer = "fc3"

    def __init__(self, shape: InputShape, *, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(shape.channels * shape.height * shape.width, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, shape.classes)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, C*H*W)
        x = self.drop(torch.relu(self.fc1(x)))  # (B, 300)
        x = self.drop(torch.relu(self.fc2(x)))  # (B, 100)
        return self.fc3(x)  # (B, classes)


class ConvNet(nn.Module):
    """Conv-2, Conv-4 or Conv-6 (Frankle & Carbin fig. 2): pairs of 3x3 convs, max-pools, FC 256-256."""

    output_layer = "fc3"

    def __init__(self, shape: InputShape, *, pairs: int, dropout: float = 0.0) -> None:
        super().__init__()
        widths = (64, 128, 256)[:pairs]  # Conv-2: [64, 64, pool]; Conv-4 adds 128s; Conv-6 adds 256s
        layers: list[nn.Module] = []
        channels = shape.channels
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
                nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        side_h, side_w = shape.height >> pairs, shape.width >> pairs  # each pool halves (floor)
        self.fc1 = nn.Linear(channels * side_h * side_w, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, shape.classes)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).flatten(1)  # (B, width * H/2^pairs * W/2^pairs)
        x = self.drop(torch.relu(self.fc1(x)))  # (B, 256)
        x = self.drop(torch.relu(self.fc2(x)))  # (B, 256)
        return self.fc3(x)  # (B, classes)


VGG19_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                512, 512, 512, 512)  # the CIFAR form used by Frankle & Carbin (from Liu et al. 2019)


class VGG19(nn.Module):
    """VGG-19 for CIFAR: 3x3 convs with BatchNorm, global average pooling, one FC layer 512 -> classes."""

    output_layer = "fc"

    def __init__(self, shape: InputShape) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = shape.channels
        for item in VGG19_LAYERS:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                width = int(item)
                # no conv bias: the BatchNorm that follows has its own
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU()]
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, shape.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)  # (B, 512)
        return self.fc(x)  # (B, classes)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut; a 1x1 conv + BN projection where the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """ResNet-20 for CIFAR (He et al. 2016, sec. 4.2): conv 16, three stages of 3 blocks (16/32/64), fc."""

    output_layer = "fc"

    def __init__(self, shape: InputShape) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(shape.channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages: list[nn.Module] = []
        channels = 16
        for i, width in enumerate((16, 32, 64)):
            blocks = [BasicBlock(channels, width, stride=1 if i == 0 else 2)]
            blocks += [BasicBlock(width, width, stride=1) for _ in range(2)]
            stages.append(nn.Sequential(*blocks))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, shape.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, H/4, W/4)
        return self.fc(self.pool(x).flatten(1))  # (B, classes)


MIN_SIDE = {"conv2": 2, "conv4": 4, "conv6": 8, "vgg19": 16}  # images must survive every max-pool


def build_model(name: str, shape: InputShape, *, dropout: float, seed: int) -> nn.Module:
    """The named model, initialised from `seed` alone; the caller's global RNG state is left as it was."""
    side = min(shape.height, shape.width)
    if side < MIN_SIDE.get(name, 1):
        raise TaskError(
            f"task.model {name!r} needs images of at least {MIN_SIDE[name]}x{MIN_SIDE[name]} pixels "
            f"(one per max-pool halving), got {shape.height}x{shape.width}; set task.image_size or "
            "choose another model"
        )
    # module constructors draw from the global RNG: fork it so the caller's stream is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: nn.Module
        if name == "lenet300_100":
            model = LeNet300100(shape, dropout=dropout)
        elif name in ("conv2", "conv4", "conv6"):
            model = ConvNet(shape, pairs=int(name[-1]) // 2, dropout=dropout)
        elif name == "vgg19":
            model = VGG19(shape)
        elif name == "resnet20":
            model = ResNet20(shape)
        else:
            raise TaskError(f"task.model must be one of {', '.join(MODELS)}, got {name!r}")
        init_weights(model, kaiming=name in ("vgg19", "resnet20"))
    return model


@torch.no_grad()
def init_weights(model: nn.Module, *, kaiming: bool) -> None:
    """Gaussian Glorot (Frankle & Carbin) or Kaiming normal weights, zero biases, BatchNorm at 1 and 0."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            if kaiming:
                nn.init.kaiming_normal_(module.weight)  # fan_in, gain sqrt(2) for ReLU
            else:
                nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every weight matrix and conv kernel (nn.Linear, nn.Conv2d) by parameter name; no biases, no norms."""
    found: dict[str, nn.Parameter] = {}
    for prefix, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.weight.dim() >= 2:
            found[f"{prefix}.weight" if prefix else "weight"] = module.weight
    return found


def output_layer_params(model: nn.Module) -> set[str]:
    """Parameter names of the model's output layer (weight and bias)."""
    layer = getattr(type(model), "output_layer", None)
    if not isinstance(layer, str):
        raise TaskError(
            f"{type(model).__name__} was not built by the vision plugin: it names no output_layer"
        )
    names = {n for n, _ in model.named_parameters() if n.rpartition(".")[0] == layer}
    return names
