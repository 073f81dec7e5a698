"""Plain ``nn.Module`` networks that use CustomDropout (with ``learn_dropout``, ConcreteDropout). No Lightning here."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dropout_lab.dropout import (
    ConcreteDropout,
    ConcreteDropout2d,
    CustomDropout,
    CustomDropout2d,
    check_p,
    check_start_p,
    check_temperature,
)


class MLP(nn.Module):
    """Flatten, then Linear -> ReLU -> CustomDropout for every hidden width, then a linear head.

    With ``learn_dropout``, ConcreteDropout layers that start at the given rates and learn them.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (1024, 1024),
        dropout: float = 0.5,
        input_dropout: float = 0.2,
        learn_dropout: bool = False,
        concrete_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        check_rates({"dropout": dropout, "input_dropout": input_dropout}, learn_dropout, concrete_temperature)
        width = math.prod(input_shape)
        layers: list[nn.Module] = [
            nn.Flatten(),
            dropout_layer(input_dropout, width, learn_dropout, concrete_temperature),
        ]
        for out in hidden:
            layers += [
                nn.Linear(width, out),
                nn.ReLU(),
                dropout_layer(dropout, out, learn_dropout, concrete_temperature),
            ]
            width = out
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class CNN(nn.Module):
    """Conv blocks (two 3x3 convs, max-pool, CustomDropout2d), then a dropout-regularized MLP head.

    With ``batch_norm``, each conv is followed by BatchNorm2d (and has no bias of its own: the
    norm's shift replaces it). With ``learn_dropout``, ConcreteDropout2d and ConcreteDropout layers
    that start at the given rates and learn them.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 256,
        dropout: float = 0.5,
        conv_dropout: float = 0.1,
        batch_norm: bool = False,
        learn_dropout: bool = False,
        concrete_temperature: float = 0.1,
    ) -> None:
        super().__init__()
        check_rates({"dropout": dropout, "conv_dropout": conv_dropout}, learn_dropout, concrete_temperature)
        in_channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [
                *conv_layers(in_channels, out, batch_norm),
                *conv_layers(out, out, batch_norm),
                nn.MaxPool2d(2),
                dropout_layer(conv_dropout, out, learn_dropout, concrete_temperature, channels=True),
            ]
            in_channels, height, width = out, height // 2, width // 2
        self.features = nn.Sequential(*blocks).to(memory_format=torch.channels_last)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden),
            nn.ReLU(),
            dropout_layer(dropout, hidden, learn_dropout, concrete_temperature),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"CNN expects a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        # Channels-last (NHWC) convolutions and BatchNorm run faster on the CPU (oneDNN; measured by
        # benchmarks/conv_layout.py) and suit a GPU's tensor cores. The conv weights were put in that
        # layout in __init__; load_state_dict copies values in, so checkpoints do not depend on it.
        return self.head(self.features(x.contiguous(memory_format=torch.channels_last)))


def conv_layers(in_channels: int, out_channels: int, batch_norm: bool) -> list[nn.Module]:
    """A 3x3 conv that keeps the image size, then (optionally) BatchNorm2d, then ReLU."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]


def check_rates(rates: dict[str, float], learn: bool, temperature: float) -> None:
    """Refuse, by the argument's name, a rate outside [0, 1), or one that cannot start a learned rate."""
    for name, p in rates.items():
        check_start_p(p, name) if learn else check_p(p, name)
        if p == 1:  # a valid layer, but in a network it passes nothing on: training at chance, without a word
            raise ValueError(
                f"{name}=1 drops every unit: the layers after it see only zeros and the model trains at chance. "
                f"Use {name} below 1 (0.5 is the usual hidden-layer rate, 0 no dropout)."
            )
    check_temperature(temperature, "concrete_temperature")


def dropout_layer(p: float, features: int, learn: bool, temperature: float, channels: bool = False) -> nn.Module:
    """CustomDropout(p), or with ``learn`` a ConcreteDropout of ``features`` inputs starting at p; 2d: ``channels``."""
    if not learn:
        return CustomDropout2d(p) if channels else CustomDropout(p)
    return (ConcreteDropout2d if channels else ConcreteDropout)(features, p, temperature)


def concrete_dropout_and_next_layer(net: nn.Module) -> list[tuple[str, ConcreteDropout, nn.Module]]:
    """Each ConcreteDropout layer of ``net`` (its name, itself) with the Linear or Conv2d that takes its output.

    Which layer takes the output is read from the order of ``net.modules()``: in the networks above (nn.Sequential)
    that is the order in which the data passes them. A network built another way needs its own pairing.
    """
    pairs, waiting = [], None
    for name, module in net.named_modules():
        if isinstance(module, ConcreteDropout):
            waiting = (name, module)
        elif isinstance(module, (nn.Linear, nn.Conv2d)) and waiting is not None:
            pairs.append((*waiting, module))
            waiting = None
    return pairs


def dropout_roles(net: nn.Module) -> dict[str, str]:
    """Each dropout layer's module name in ``net`` -> its role, the name TensorBoard's tags give it.

    input, hidden1, hidden2, ... for an MLP; conv1, conv2, ..., head for a CNN (head2, ... if it has more).
    Read from the order of ``net.modules()``, as concrete_dropout_and_next_layer does: a layer before any
    Linear or Conv2d drops the input; a channel dropout follows a conv block; the others follow a hidden layer,
    or, in a network with conv blocks, belong to the head.
    """
    roles, weights, convs, ones = {}, False, 0, 0
    for name, module in net.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            weights = True
        elif isinstance(module, (CustomDropout2d, ConcreteDropout2d)):  # subclasses of the 1d ones: first
            convs += 1
            roles[name] = f"conv{convs}"
        elif isinstance(module, (CustomDropout, ConcreteDropout)):
            if not weights:
                roles[name] = "input"
                continue
            ones += 1
            roles[name] = (f"head{ones}" if ones > 1 else "head") if convs else f"hidden{ones}"
    return roles
