"""Plain ``nn.Module`` networks that use CustomDropout. No Lightning in here."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dropout_lab.dropout import CustomDropout, CustomDropout2d, check_p


class MLP(nn.Module):
    """Flatten, then Linear -> ReLU -> CustomDropout for every hidden width, then a linear head."""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (1024, 1024),
        dropout: float = 0.5,
        input_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        check_p(dropout, "dropout")
        check_p(input_dropout, "input_dropout")
        layers: list[nn.Module] = [nn.Flatten(), CustomDropout(input_dropout)]
        width = math.prod(input_shape)
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
        check_p(dropout, "dropout")
        check_p(conv_dropout, "conv_dropout")
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
