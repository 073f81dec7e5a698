"""The geometry of the augmentations: where a known shape lands, measured on the output images."""

import pytest
import torch

from dropout_lab.data.augment import AugmentedBatches, random_affine

SIZE = 41  # square (a rotation in affine_grid's -1..1 coordinates is one in pixels) and odd: a centre pixel
CENTRE = (SIZE - 1) / 2
RADIUS = 12.0
DEGREES = 20.0  # keeps each spot 25 degrees (5 sigma) from the diagonals that separate them


def blob(row: float, col: float) -> torch.Tensor:
    """A Gaussian spot at (row, col): its centre of mass is measured to a small fraction of a pixel."""
    rows, cols = torch.meshgrid(
        torch.arange(SIZE, dtype=torch.float64), torch.arange(SIZE, dtype=torch.float64), indexing="ij"
    )
    return 255 * torch.exp(-((rows - row) ** 2 + (cols - col) ** 2) / 2)


def two_spots(n: int) -> torch.Tensor:
    """n copies of an image with a spot RADIUS pixels right of the centre and one RADIUS pixels below it."""
    image = blob(CENTRE, CENTRE + RADIUS) + blob(CENTRE + RADIUS, CENTRE)
    return image.float().expand(n, 1, SIZE, SIZE).contiguous()


def spot_positions(images: torch.Tensor) -> torch.Tensor:
    """(n, 2 spots, (x, y)) relative to the centre, y pointing down; each spot found near where one could be."""
    n = len(images)
    rows, cols = torch.meshgrid(torch.arange(SIZE) - CENTRE, torch.arange(SIZE) - CENTRE, indexing="ij")
    image = images[:, 0]
    spots = []
    # Rotations here stay within DEGREES, flips mirror x: the first spot stays near the x axis
    # (left or right), the second near the positive y axis.
    near_x_axis = rows.abs() < cols.abs()
    for mask in (near_x_axis, ~near_x_axis & (rows > 0)):
        weight = image * mask
        total = weight.sum(dim=(1, 2))
        spots.append(torch.stack([(weight * cols).sum(dim=(1, 2)) / total, (weight * rows).sum(dim=(1, 2)) / total], 1))
    return torch.stack(spots, 1).view(n, 2, 2)


@pytest.mark.parametrize("flip", [False, True])
def test_rotation_moves_both_spots_rigidly_by_one_angle_of_either_sign(flip):
    torch.manual_seed(0)
    moved = spot_positions(random_affine(two_spots(256), degrees=DEGREES, scale=0, shift=0, flip=flip))
    first, second = moved[:, 0], moved[:, 1]
    # A rotation (mirrored or not) keeps each spot RADIUS from the centre and the two at right angles.
    torch.testing.assert_close(first.norm(dim=1), torch.full((256,), RADIUS), atol=0.1, rtol=0)
    torch.testing.assert_close(second.norm(dim=1), torch.full((256,), RADIUS), atol=0.1, rtol=0)
    torch.testing.assert_close((first * second).sum(dim=1) / RADIUS**2, torch.zeros(256), atol=0.01, rtol=0)
    mirrored = first[:, 0] < 0
    if flip:
        assert 64 < mirrored.sum() < 192  # about half
    else:
        assert not mirrored.any()
    # The second spot, on the y axis, is not moved by the mirror: its angle is the rotation's.
    angle = torch.rad2deg(torch.atan2(second[:, 0], second[:, 1]))
    # The first, on the x axis, turns by the same angle (the other way round when mirrored).
    first_angle = torch.rad2deg(torch.atan2(first[:, 1], first[:, 0].abs()))
    torch.testing.assert_close(first_angle, torch.where(mirrored, angle, -angle), atol=0.5, rtol=0)
    assert angle.abs().max() <= DEGREES + 0.5
    assert angle.min() < -0.9 * DEGREES and angle.max() > 0.9 * DEGREES  # both ways, to the edge of the range


def test_shift_reaches_shift_pixels_along_each_axis_and_no_further():
    torch.manual_seed(0)
    images = blob(CENTRE, CENTRE).float().expand(512, 1, SIZE, SIZE)
    weight = random_affine(images, degrees=0, scale=0, shift=3, flip=False)[:, 0]
    rows, cols = torch.meshgrid(torch.arange(SIZE) - CENTRE, torch.arange(SIZE) - CENTRE, indexing="ij")
    total = weight.sum(dim=(1, 2))
    offsets = torch.stack([(weight * cols).sum(dim=(1, 2)), (weight * rows).sum(dim=(1, 2))], 1) / total.unsqueeze(1)
    assert offsets.abs().max() <= 3.05
    for axis in range(2):
        assert offsets[:, axis].min() < -2.8 and offsets[:, axis].max() > 2.8


def test_crop_takes_every_offset_and_both_flips():
    # Each pixel holds its own position (1 + row * w + col), so the crop and flip of every output can be read off.
    h = w = 12
    torch.manual_seed(0)
    images = (1 + torch.arange(h * w)).view(1, 1, h, w).expand(2000, 1, h, w)
    batches = AugmentedBatches(images, torch.zeros(2000, dtype=torch.long), mean=(0.0,), std=(1.0,))
    out = batches.transform(images)[:, 0]
    pad = batches.pad
    r = c = h // 2  # always inside the image: pad < h / 2
    value, right = out[:, r, c], out[:, r, c + 1]
    flipped = right < value
    row, col = (value - 1) // w, (value - 1) % w
    top = row + pad - r
    left = col + pad - torch.where(flipped, w - 1 - c, c)
    assert set(top.tolist()) == set(range(2 * pad + 1))
    assert set(left.tolist()) == set(range(2 * pad + 1))
    assert set(flipped.tolist()) == {False, True}
    # And the rest of each output is that crop of the zero-padded image.
    padded = torch.nn.functional.pad(images[:, 0], (pad,) * 4)
    for i in range(20):
        crop = padded[i, top[i] : top[i] + h, left[i] : left[i] + w]
        assert torch.equal(out[i], crop.flip(-1) if flipped[i] else crop)
