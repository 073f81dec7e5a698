"""The 5,000 MNIST digits that ship inside the package (dropout_lab/mnist5k/): the offline default."""

import gzip
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from dropout_lab.data.augment import AffineBatches
from dropout_lab.data.base import InMemoryDataModule, check_holdout, stratified_split

MNIST5K_DIR = Path(__file__).parent.parent / "mnist5k"
MNIST5K_SIZE = 5000


def read_idx_gz(path: Path) -> Tensor:
    """Read a gzipped IDX file (the MNIST format) of unsigned bytes into a uint8 tensor."""
    data = gzip.open(path).read()
    ndim = data[3]
    shape = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy())


class MNIST5kDataModule(InMemoryDataModule):
    """5,000 real MNIST digits that ship with the package (500 per digit): the offline default.

    Args:
        val_size: digits held out (seeded, stratified) for validation.
        test_size: digits held out (seeded, stratified) for testing.
        batch_size: images per batch.
        num_workers: DataLoader worker processes; 0 is fastest for data held in memory.
        seed: seed of the train/validation/test split, of train_subset and of the training images used for the gap.
        train_subset: train on this many of the 4,000 training digits (seeded, stratified), for learning curves
            over the amount of data; validation and test digits stay the same. None: all of them.
        augment: a small random rotation, scale and shift of each training image (no flip), on training
            batches only (validation, train_eval and test images are never augmented).
        folds: k-fold cross-validation: the images outside the test set are split into this many stratified,
            seeded folds, and ``fold`` validates (instead of val_size). None: one validation split of val_size.
        fold: which of the folds validates, 0 to folds - 1; the others train.
    """

    input_shape = (1, 28, 28)
    mean, std = (0.1307,), (0.3081,)

    def __init__(
        self,
        val_size: int = 500,
        test_size: int = 500,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = False,
        train_subset: int | None = None,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        check_holdout(test_size, MNIST5K_SIZE, "test_size")
        self.train_size = MNIST5K_SIZE - test_size
        super().__init__(val_size, batch_size, num_workers, seed, train_subset, folds, fold)
        if augment:
            self.batches = AffineBatches

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        images = read_idx_gz(MNIST5K_DIR / "images-idx3-ubyte.gz").unsqueeze(1)
        labels = read_idx_gz(MNIST5K_DIR / "labels-idx1-ubyte.gz").long()
        # The records are sorted by label: the split must shuffle and stratify.
        rest, test = stratified_split(labels, self.hparams.test_size, self.hparams.seed, "test_size")
        return images[rest], labels[rest], images[test], labels[test]


class ShiftedMNIST5kDataModule(MNIST5kDataModule):
    """The embedded test digits inverted (dark on light) or rotated by 90 degrees: an out-of-distribution set
    made offline, for ``python train.py test --ood_data=ShiftedMNIST5kDataModule --ood_data.shift=inverted``.

    Only the test split is shifted, so the set holds the same digits as MNIST5kDataModule's test split
    with the same ``test_size`` and ``seed``, each one changed.

    Args:
        shift: inverted (255 - pixel) or rotated (90 degrees counter-clockwise).
        test_size: digits held out (seeded, stratified) for testing.
        batch_size: images per batch.
        seed: seed of the split, as MNIST5kDataModule's.
    """

    def __init__(
        self,
        shift: Literal["inverted", "rotated"] = "inverted",
        test_size: int = 500,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        if shift not in ("inverted", "rotated"):
            raise ValueError(f"shift must be inverted or rotated, got {shift!r}")
        super().__init__(test_size=test_size, batch_size=batch_size, seed=seed)
        self.shift = shift

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        images, labels, test_images, test_labels = super().load()
        shifted = 255 - test_images if self.shift == "inverted" else test_images.rot90(1, dims=(2, 3))
        return images, labels, shifted, test_labels
