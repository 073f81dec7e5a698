"""DataModules on torchvision's dataset files: MNIST, Fashion-MNIST and CIFAR-10."""

from pathlib import Path

import torch
from torch import Tensor
from torchvision import datasets

from dropout_lab.data.augment import AffineBatches, AugmentedBatches, FlippedAffineBatches
from dropout_lab.data.base import InMemoryDataModule
from dropout_lab.data.files import check_idx, require_files, try_download, why_missing


class TorchvisionDataModule(InMemoryDataModule):
    """Base of the DataModules on a torchvision dataset class: download once, then check the files.

    Subclasses set ``dataset`` and give ``folder``, ``files`` and ``check_files``.
    """

    dataset: type

    def prepare_data(self) -> None:
        # Lightning calls this in one process per machine (local rank 0), before setup() on every rank.
        failure = None
        if self.hparams.download and not all((self.folder / name).is_file() for name in self.files):
            failure = try_download(lambda: self.dataset(self.hparams.data_dir, train=False, download=True), self.folder)
        self.check_files(failure)


class MNISTDataModule(TorchvisionDataModule):
    """MNIST handwritten digits (60,000 training and 10,000 test images, 28x28), in torchvision's files.

    Args:
        data_dir: folder of torchvision datasets: the files are DATA_DIR/MNIST/raw/*-ubyte.
        download: download missing files (needs network access; one process per machine downloads).
        val_size: training images held out (seeded, stratified) for validation; the test set is the official one.
        batch_size: images per batch.
        num_workers: DataLoader worker processes; 0 is fastest for data held in memory.
        seed: seed of the train/validation split, of train_subset and of the training images used for the gap.
        train_subset: train on this many images of the training split (seeded, stratified), for learning curves
            over the amount of data; validation and test images stay the same. None: the whole split.
        augment: a small random rotation, scale and shift of each training image (no flip), on training
            batches only (validation, train_eval and test images are never augmented).
        folds: k-fold cross-validation: the images outside the test set are split into this many stratified,
            seeded folds, and ``fold`` validates (instead of val_size). None: one validation split of val_size.
        fold: which of the folds validates, 0 to folds - 1; the others train.
    """

    dataset = datasets.MNIST
    input_shape = (1, 28, 28)
    train_size = 60_000
    mean, std = (0.1307,), (0.3081,)  # of the 60,000 training images
    augmented = AffineBatches  # the training batches with --data.augment=true

    def __init__(
        self,
        data_dir: str = "data/",
        download: bool = True,
        val_size: int = 5000,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = False,
        train_subset: int | None = None,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__(val_size, batch_size, num_workers, seed, train_subset, folds, fold)
        if augment:
            self.batches = self.augmented

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.check_files()
        train = self.dataset(self.hparams.data_dir, train=True)
        test = self.dataset(self.hparams.data_dir, train=False)
        return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets

    @property
    def folder(self) -> Path:
        """torchvision's ``raw_folder`` of this dataset."""
        return Path(self.hparams.data_dir) / self.dataset.__name__ / "raw"

    @property
    def files(self) -> list[str]:
        """The extracted files torchvision reads: its downloads, without the .gz."""
        return [Path(archive).stem for archive, _ in self.dataset.resources]

    def check_files(self, failure: str | None = None) -> None:
        """Raise a clear error if a file is missing or not a complete IDX file."""
        archives = ", ".join(archive for archive, _ in self.dataset.resources)
        or_else = f"put the original {archives} there: --data.download=true then only checks and extracts them."
        require_files(
            self.dataset.__name__,
            self.folder,
            dict.fromkeys(self.files),
            why_missing(self.hparams.download, failure),
            or_else,
        )
        for name in self.files:
            check_idx(self.folder / name)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST: Zalando's clothing images (60,000 training, 10,000 test, 28x28), in torchvision's files.

    Args:
        data_dir: folder of torchvision datasets: the files are DATA_DIR/FashionMNIST/raw/*-ubyte.
        download: download missing files (needs network access; one process per machine downloads).
        val_size: training images held out (seeded, stratified) for validation; the test set is the official one.
        batch_size: images per batch.
        num_workers: DataLoader worker processes; 0 is fastest for data held in memory.
        seed: seed of the train/validation split, of train_subset and of the training images used for the gap.
        train_subset: train on this many images of the training split (seeded, stratified), for learning curves
            over the amount of data; validation and test images stay the same. None: the whole split.
        augment: a small random rotation, scale and shift of each training image, and a left-right flip of
            half of them, on training batches only (validation, train_eval and test images are never augmented).
        folds: k-fold cross-validation: the images outside the test set are split into this many stratified,
            seeded folds, and ``fold`` validates (instead of val_size). None: one validation split of val_size.
        fold: which of the folds validates, 0 to folds - 1; the others train.
    """

    dataset = datasets.FashionMNIST
    mean, std = (0.2860,), (0.3530,)  # of the 60,000 training images
    augmented = FlippedAffineBatches


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 colour images in 10 classes (50,000 training and 10,000 test, 32x32), in torchvision's files.

    Args:
        data_dir: folder of torchvision datasets: the files are DATA_DIR/cifar-10-batches-py/*.
        download: download missing files (needs network access; one process per machine downloads).
        val_size: training images held out (seeded, stratified) for validation; the test set is the official one.
        batch_size: images per batch.
        num_workers: DataLoader worker processes; 0 is fastest for data held in memory.
        seed: seed of the train/validation split, of train_subset and of the training images used for the gap.
        train_subset: train on this many images of the training split (seeded, stratified), for learning curves
            over the amount of data; validation and test images stay the same. None: the whole split.
        augment: random 32x32 crop of the image padded by 4 pixels, and random horizontal flip, on training
            batches only (validation, train_eval and test images are never augmented).
        folds: k-fold cross-validation: the images outside the test set are split into this many stratified,
            seeded folds, and ``fold`` validates (instead of val_size). None: one validation split of val_size.
        fold: which of the folds validates, 0 to folds - 1; the others train.
    """

    dataset = datasets.CIFAR10
    input_shape = (3, 32, 32)
    train_size = 50_000
    # Per-channel mean and std over all pixels of the 50,000 training images.
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def __init__(
        self,
        data_dir: str = "data/",
        download: bool = True,
        val_size: int = 5000,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        augment: bool = False,
        train_subset: int | None = None,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__(val_size, batch_size, num_workers, seed, train_subset, folds, fold)
        if augment:
            self.batches = AugmentedBatches

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        self.check_files()
        train = self.dataset(self.hparams.data_dir, train=True)
        test = self.dataset(self.hparams.data_dir, train=False)
        # torchvision keeps (N, H, W, C) numpy arrays and label lists.
        images, test_images = (torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous() for d in (train, test))
        return images, torch.tensor(train.targets), test_images, torch.tensor(test.targets)

    @property
    def folder(self) -> Path:
        """torchvision's folder of the extracted batches."""
        return Path(self.hparams.data_dir) / self.dataset.base_folder

    @property
    def files(self) -> list[str]:
        """The files torchvision reads."""
        return list(self.md5)

    @property
    def md5(self) -> dict[str, str]:
        """The files torchvision reads and their MD5 sums, from its own table."""
        meta = self.dataset.meta
        return {**dict(self.dataset.train_list + self.dataset.test_list), meta["filename"]: meta["md5"]}

    def check_files(self, failure: str | None = None) -> None:
        """Raise a clear error if a file is missing or fails its MD5 checksum."""
        archive = Path(self.hparams.data_dir) / self.dataset.filename
        or_else = f"put the original {archive}: --data.download=true then only checks and extracts it."
        require_files(
            self.dataset.__name__, self.folder, self.md5, why_missing(self.hparams.download, failure), or_else
        )
