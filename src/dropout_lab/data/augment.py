"""Augmentations of a whole training batch at once: one batched operation, a different draw per image."""

import torch
import torch.nn.functional as F
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


def random_affine(images: Tensor, degrees: float, scale: float, shift: float, flip: bool) -> Tensor:
    """Each image of a (N, C, H, W) batch rotated, scaled, shifted (and flipped) by its own random draw.

    Uniform draws: rotation in [-degrees, degrees], scale in [1 - scale, 1 + scale], shift in
    [-shift, shift] pixels along each axis, and, if ``flip``, a left-right flip with probability 1/2.
    Pixels moved in from outside the image are 0 (the black background of the digits). Returns float
    images on the scale of the input (0 to 255 for uint8), bilinearly interpolated.
    """
    # torchvision's v2 RandomAffine draws one transform for a whole batch tensor; here each image draws
    # its own, from torch's global generator (seed_everything fixes it; under DDP each rank is offset).
    n, _, h, w = images.shape
    angle = torch.deg2rad((torch.rand(n) * 2 - 1) * degrees)
    zoom = 1 + (torch.rand(n) * 2 - 1) * scale
    # affine_grid maps each output pixel to the input point it samples, in coordinates from -1 to 1
    # across the image (align_corners=False): one pixel is 2/w wide. Sampling at points divided by
    # the zoom enlarges the image by the zoom.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    mirror = torch.where(torch.rand(n) < 0.5, -1.0, 1.0) if flip else torch.ones(n)
    offset = (torch.rand(n, 2) * 2 - 1) * shift * torch.tensor([2 / w, 2 / h])
    theta = torch.stack(
        [torch.stack([cos * mirror, -sin, offset[:, 0]], 1), torch.stack([sin * mirror, cos, offset[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class AffineBatches(TensorBatches):
    """Training batches of digits, each image with its own small random rotation, scale and shift; no flip
    (a mirrored 2 or 7 is no digit)."""

    degrees, scale, shift, flip = 10.0, 0.1, 2.0, False

    def transform(self, images: Tensor) -> Tensor:
        return random_affine(images, self.degrees, self.scale, self.shift, self.flip)


class FlippedAffineBatches(AffineBatches):
    """AffineBatches that also mirror half the images left to right: a mirrored shoe is still a shoe."""

    flip = True
