"""DataModules. Every dataset here fits in memory, so each is decoded once into tensors
and served a whole batch per indexing call: on a 2-core CPU, calling ``__getitem__`` per
image and collating costs more than the MLP itself.

A DataModule for this template provides ``input_shape`` and ``num_classes`` (train.py
passes them to the model) and, for the honest generalization gap, a second validation
loader over a fixed subset of the training data, without augmentation.
"""

import gzip
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.error import URLError

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets
from torchvision.datasets.utils import check_integrity

# Workers only copy tensors that are already in memory; the main process is faster.
warnings.filterwarnings("ignore", ".*does not have many workers.*")

MNIST5K_DIR = Path(__file__).parent / "mnist5k"
MNIST5K_SIZE = 5000


class TensorBatches(Dataset):
    """uint8 images (N, C, H, W) and int64 labels, returned normalized a whole batch at a time."""

    def __init__(self, images: Tensor, labels: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        # The DataLoader calls this with the sampler's whole batch of indices.
        index = torch.as_tensor(indices)
        images = self.transform(self.images[index])
        return (images.float() / 255 - self.mean) / self.std, self.labels[index]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def transform(self, images: Tensor) -> Tensor:
        """Augment a uint8 batch; evaluation data is served as it is."""
        return images


def keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """collate_fn for TensorBatches: ``__getitems__`` already returns a batch."""
    return batch


def stratified_split(labels: Tensor, n_holdout: int, seed: int, name: str) -> tuple[Tensor, Tensor]:
    """Split indices into (rest, holdout) with ``n_holdout`` items spread evenly over the classes.

    ``name`` is the argument that asked for ``n_holdout``, for the error message.
    """
    check_holdout(n_holdout, len(labels), name)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    by_class = order[torch.sort(labels[order], stable=True).indices]
    # Evenly spaced picks through the class-sorted list take each class in proportion.
    holdout = by_class[(torch.arange(n_holdout) * len(labels)) // n_holdout]
    is_rest = torch.ones(len(labels), dtype=torch.bool)
    is_rest[holdout] = False
    return is_rest.nonzero().squeeze(1), holdout.sort().values


def check_holdout(n_holdout: int, n: int, name: str) -> None:
    if not 0 < n_holdout < n:
        raise ValueError(f"{name}={n_holdout} cannot be held out of {n} examples: choose 0 < {name} < {n}")


class InMemoryDataModule(L.LightningDataModule):
    """Base of the DataModules here: subclasses set the class attributes and implement ``load``.

    Args:
        val_size: number of training images held out (seeded, stratified) for validation.
        batch_size: images per batch.
        num_workers: DataLoader worker processes; 0 is fastest for data held in memory.
        seed: seed of the train/validation split and of the training subset used for the gap.
    """

    input_shape: tuple[int, int, int]
    num_classes: int = 10
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batches = TensorBatches  # the Dataset class of the training split: a subclass may augment
    train_eval_cap = 10_000  # the training subset evaluated for the gap is as large as val, up to this
    # Images in the training split load() returns, when known without loading: an impossible val_size
    # is then refused in __init__, before the Trainer makes a run folder.
    train_size: int | None = None

    def __init__(self, val_size: int, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if val_size <= 0:
            raise ValueError(f"val_size must be a positive number of images, got {val_size}")
        if self.train_size is not None:
            check_holdout(val_size, self.train_size, "val_size")
        self.save_hyperparameters(logger=False)  # TensorBoardLayout logs them, with metrics

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return train images, train labels, test images, test labels: uint8 (N, C, H, W) and int64 (N,)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if hasattr(self, "train_set"):  # fit, then test: load once
            return
        images, labels, test_images, test_labels = self.load()
        train, val = stratified_split(labels, self.hparams.val_size, self.hparams.seed, "val_size")
        seeded = torch.Generator().manual_seed(self.hparams.seed)
        train_eval = train[torch.randperm(len(train), generator=seeded)[: min(len(val), self.train_eval_cap)]]
        self.train_set = self.batches(images[train], labels[train], self.mean, self.std)
        self.val_set = TensorBatches(images[val], labels[val], self.mean, self.std)
        self.train_eval_set = TensorBatches(images[train_eval], labels[train_eval], self.mean, self.std)
        self.test_set = TensorBatches(test_images, test_labels, self.mean, self.std)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> list[DataLoader]:
        # Index 0 is logged as val/, index 1 as train_eval/ (see Classifier.validation_step).
        return [self._loader(self.val_set), self._loader(self.train_eval_set)]

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def _loader(self, dataset: TensorBatches, shuffle: bool = False) -> DataLoader:
        sampler = None
        if not shuffle and self.trainer is not None and self.trainer.world_size > 1:
            # Lightning's default DistributedSampler pads the last rank with repeated images, which
            # would count twice in the evaluation metrics; this sampler gives each image to one rank.
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=self.trainer.world_size, rank=self.trainer.global_rank, shuffle=False
            )
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.hparams.num_workers,
            collate_fn=keep_batch,
            persistent_workers=self.hparams.num_workers > 0,
        )


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
        seed: seed of the train/validation/test split and of the training subset used for the gap.
    """

    input_shape = (1, 28, 28)
    mean, std = (0.1307,), (0.3081,)

    def __init__(
        self, val_size: int = 500, test_size: int = 500, batch_size: int = 64, num_workers: int = 0, seed: int = 0
    ) -> None:
        check_holdout(test_size, MNIST5K_SIZE, "test_size")
        self.train_size = MNIST5K_SIZE - test_size
        super().__init__(val_size, batch_size, num_workers, seed)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        images = read_idx_gz(MNIST5K_DIR / "images-idx3-ubyte.gz").unsqueeze(1)
        labels = read_idx_gz(MNIST5K_DIR / "labels-idx1-ubyte.gz").long()
        # The records are sorted by label: the split must shuffle and stratify.
        rest, test = stratified_split(labels, self.hparams.test_size, self.hparams.seed, "test_size")
        return images[rest], labels[rest], images[test], labels[test]


def require_files(dataset: str, folder: Path, md5: dict[str, str | None], why: str, or_else: str) -> None:
    """Raise FileNotFoundError (what is missing, how to get it) or RuntimeError (which file fails its MD5)."""
    missing = [name for name in md5 if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{dataset} files not found in {folder}/ ({why}).\n"
            f"  Expected there: {', '.join(md5)}\n"
            f"  Missing: {', '.join(missing)}\n"
            f"  To get them, run once on a machine with network access with --data.download=true and the same "
            f"--data.data_dir, or copy them there from an existing download, or {or_else}"
        )
    for name, checksum in md5.items():
        if checksum is not None and not check_integrity(folder / name, checksum):
            raise RuntimeError(corrupt(folder / name, f"its MD5 checksum is not {checksum}"))


def corrupt(path: Path, why: str) -> str:
    """The message for a file that is there but is not the right one."""
    return f"{path} is corrupt or truncated ({why}): delete it and download it again (--data.download=true)."


def try_download(fetch: Callable[[], object]) -> str | None:
    """Run torchvision's download; return why it failed (for the missing-files message), or None."""
    try:
        fetch()
    except (URLError, OSError, RuntimeError) as err:  # torchvision wraps some URLErrors into RuntimeError
        return "the download failed: " + " ".join(str(err).split())
    return None


def why_missing(download: bool, failure: str | None) -> str:
    """Why the files can be missing, for the message of require_files."""
    if failure:
        return failure
    if not download:
        return "downloading is off: --data.download=false"
    return "prepare_data() downloads them, in one process per machine"


def check_idx(path: Path) -> None:
    """Raise a RuntimeError naming ``path`` if it is not a complete IDX file of unsigned bytes."""
    # torchvision checks the MD5 sums of the .gz downloads only, not of the extracted files it reads.
    with open(path, "rb") as f:
        magic = f.read(4)
        ndim = magic[3] if len(magic) == 4 else 0
        dims = np.frombuffer(f.read(4 * ndim), dtype=">u4")
    if magic[:3] != b"\0\0\x08" or len(dims) != ndim:
        raise RuntimeError(corrupt(path, "no IDX header of unsigned bytes"))
    size = 4 + 4 * ndim + math.prod(int(d) for d in dims)
    if path.stat().st_size != size:
        raise RuntimeError(corrupt(path, f"{path.stat().st_size} bytes where its header promises {size}"))


class TorchvisionDataModule(InMemoryDataModule):
    """Base of the DataModules on a torchvision dataset class: download once, then check the files.

    Subclasses set ``dataset`` and give ``folder``, ``files`` and ``check_files``.
    """

    dataset: type

    def prepare_data(self) -> None:
        # Lightning calls this in one process per machine (local rank 0), before setup() on every rank.
        failure = None
        if self.hparams.download and not all((self.folder / name).is_file() for name in self.files):
            failure = try_download(lambda: self.dataset(self.hparams.data_dir, train=False, download=True))
        self.check_files(failure)


class MNISTDataModule(TorchvisionDataModule):
    """MNIST handwritten digits (60,000 training and 10,000 test images, 28x28), in torchvision's files.

    Args:
        data_dir: folder of torchvision datasets: the files are DATA_DIR/MNIST/raw/*-ubyte.
        download: download missing files (needs network access; one process per machine downloads).
        val_size: training images held out (seeded, stratified) for validation; the test set is the official one.
        batch_size: images per batch.
        num_workers: DataLoader worker processes; 0 is fastest for data held in memory.
        seed: seed of the train/validation split and of the training subset used for the gap.
    """

    dataset = datasets.MNIST
    input_shape = (1, 28, 28)
    train_size = 60_000
    mean, std = (0.1307,), (0.3081,)  # of the 60,000 training images

    def __init__(
        self,
        data_dir: str = "data/",
        download: bool = True,
        val_size: int = 5000,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(val_size, batch_size, num_workers, seed)

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
        seed: seed of the train/validation split and of the training subset used for the gap.
    """

    dataset = datasets.FashionMNIST
    mean, std = (0.2860,), (0.3530,)  # of the 60,000 training images


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


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 colour images in 10 classes (50,000 training and 10,000 test, 32x32), in torchvision's files.

    Args:
        data_dir: folder of torchvision datasets: the files are DATA_DIR/cifar-10-batches-py/*.
        download: download missing files (needs network access; one process per machine downloads).
        val_size: training images held out (seeded, stratified) for validation; the test set is the official one.
        batch_size: images per batch.
        num_workers: DataLoader worker processes; 0 is fastest for data held in memory.
        seed: seed of the train/validation split and of the training subset used for the gap.
        augment: random 32x32 crop of the image padded by 4 pixels, and random horizontal flip, on training
            batches only (validation, train_eval and test images are never augmented).
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
    ) -> None:
        super().__init__(val_size, batch_size, num_workers, seed)
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
