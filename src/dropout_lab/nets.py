"""Plain ``nn.Module`` networks that use CustomDropout. No Lightning here.

With ``--model.learn_dropout`` every CustomDropout(2d) is swapped for a ConcreteDropout(2d) by learned_rates.py,
as in any network of your own: nothing here knows about it.
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dropout_lab.dropout import CustomDropout, CustomDropout2d, check_p


class MLP(nn.Module):
    """Flatten and CustomDropout of the pixels, then Linear -> ReLU -> CustomDropout per hidden width, a linear head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (1024, 1024),
        dropout: float = 0.5,
        input_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        check_rates({"dropout": dropout, "input_dropout": input_dropout})
        width = math.prod(input_shape)
        layers: list[nn.Module] = [nn.Flatten(), CustomDropout(input_dropout)]
        for out in hidden:
            layers += [nn.Linear(width, out), nn.ReLU(), CustomDropout(dropout)]
            width = out
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class CNN(nn.Module):
    """Conv blocks (two 3x3 convs, max-pool, CustomDropout2d), then a dropout-regularized MLP head.

    With ``batch_norm``, each conv is followed by BatchNorm2d (and has no bias of its own: the
    norm's shift replaces it).
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
    ) -> None:
        super().__init__()
        check_rates({"dropout": dropout, "conv_dropout": conv_dropout})
        in_channels, height, width = input_shape
        blocks: list[nn.Module] = []
        for out in channels:
            blocks += [
                *conv_layers(in_channels, out, batch_norm),
                *conv_layers(out, out, batch_norm),
                nn.MaxPool2d(2),
                CustomDropout2d(conv_dropout),
            ]
            in_channels, height, width = out, height // 2, width // 2
        self.features = nn.Sequential(*blocks).to(memory_format=torch.channels_last)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * height * width, hidden),
            nn.ReLU(),
            CustomDropout(dropout),
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


def check_rates(rates: dict[str, float]) -> None:
    """Refuse, by the argument's name, a rate outside [0, 1], or 1 itself."""
    for name, p in rates.items():
        check_p(p, name)
        if p == 1:  # a valid layer, but in a network it passes nothing on: training at chance, without a word
            raise ValueError(
                f"{name}=1 drops every unit: the layers after it see only zeros and the model trains at chance. "
                f"Use {name} below 1 (0.5 is the usual hidden-layer rate, 0 no dropout)."
            )
