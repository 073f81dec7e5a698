"""Augmentations of a whole training batch at once: one batched operation, a different draw per image."""

import torch
from torch import Tensor

from dropout_lab.data.base import TensorBatches


class AugmentedBatches(TensorBatches):
    """Training batches with a random crop (after 4 pixels of zero padding) and a random horizontal flip per image."""

    pad = 4

    def transform(self, images: Tensor) -> Tensor:
        # torchvision's v2 transforms draw one crop for a whole batch tensor; here every image
        # draws its own offsets and flip, and one gather builds the whole batch.
        n, c, h, w = images.shape
        padded = torch.nn.functional.pad(images, (self.pad,) * 4)
        top = torch.randint(0, 2 * self.pad + 1, (n, 1))
        left = torch.randint(0, 2 * self.pad + 1, (n, 1))
        flip = torch.rand(n, 1) < 0.5
        rows = top + torch.arange(h)
        cols = left + torch.where(flip, torch.arange(w - 1, -1, -1), torch.arange(w))
        return padded[
            torch.arange(n).view(n, 1, 1, 1),
            torch.arange(c).view(1, c, 1, 1),
            rows.view(n, 1, h, 1),
            cols.view(n, 1, 1, w),
        ]
