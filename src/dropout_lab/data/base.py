"""The in-memory base of every DataModule here, and the seeded stratified split.

Every dataset here fits in memory, so each is decoded once into tensors and served a whole
batch per indexing call: on a 2-core CPU, calling ``__getitem__`` per image and collating
costs more than the MLP itself.

A DataModule for this template provides ``input_shape`` and ``num_classes`` (train.py
passes them to the model) and, for the honest generalization gap, a second validation
loader over a fixed subset of the training data, without augmentation.
"""

import inspect
import warnings

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

# Workers only copy tensors that are already in memory; the main process is faster.
warnings.filterwarnings("ignore", ".*does not have many workers.*")


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

    The holdout comes in a seeded random order, so that any prefix of it (``limit_val_batches``,
    or one DDP rank's share) is a fair sample of every class. ``name`` is the argument that
    asked for ``n_holdout``, for the error message.
    """
    check_holdout(n_holdout, len(labels), name)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    by_class = order[torch.sort(labels[order], stable=True).indices]
    # Evenly spaced picks through the class-sorted list take each class in proportion.
    holdout = by_class[(torch.arange(n_holdout) * len(labels)) // n_holdout]
    is_rest = torch.ones(len(labels), dtype=torch.bool)
    is_rest[holdout] = False
    # by_class is sorted by label, and so is the data this template ships: shuffle the picks.
    return is_rest.nonzero().squeeze(1), holdout[torch.randperm(n_holdout, generator=generator)]


def check_holdout(n_holdout: int, n: int, name: str) -> None:
    if not 0 < n_holdout < n:
        raise ValueError(f"{name}={n_holdout} cannot be held out of {n} examples: choose 0 < {name} < {n}")


def check_train_subset(train_subset: int | None, split: int | None, num_classes: int) -> None:
    """Refuse a training subset that is not a whole number from one image per class to the whole split."""
    if train_subset is None:
        return
    if isinstance(train_subset, bool) or not isinstance(train_subset, int):
        raise ValueError(f"train_subset is a number of training images, got {train_subset!r}: give an integer.")
    if train_subset < num_classes:
        raise ValueError(
            f"train_subset={train_subset} is fewer images than the {num_classes} classes: a stratified subset needs "
            f"at least one per class; choose --data.train_subset={num_classes} or more."
        )
    if split is not None and train_subset > split:
        raise ValueError(
            f"train_subset={train_subset} is more than the {split} images of the training split (what val_size "
            f"leaves): choose --data.train_subset={split} or fewer, or leave it out for the whole split."
        )


def fold_split(labels: Tensor, folds: int, fold: int, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices into (train, val) for ``fold`` of ``folds`` stratified, seeded folds of ``labels``.

    The same seed gives the same folds, so folds 0..k-1 validate every index exactly once, and the train parts
    hold each index k-1 times. Each class is dealt out in turn, so every fold has its share of each class.
    """
    check_folds(folds, fold, int(torch.bincount(labels).min()))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    by_class = order[torch.sort(labels[order], stable=True).indices]
    in_fold = torch.arange(len(labels)) % folds == fold
    val = by_class[in_fold]
    return by_class[~in_fold].sort().values, val[torch.randperm(len(val), generator=generator)]


def check_folds(folds: int, fold: int, smallest_class: int | None) -> None:
    """Refuse k-fold settings that cannot split the pool: fewer than 2 folds, more than a class has images, ..."""
    for name, value in (("folds", folds), ("fold", fold)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}: e.g. --data.folds=5 --data.fold=0.")
    if folds < 2:
        raise ValueError(f"folds={folds}: k-fold cross-validation needs --data.folds=2 or more.")
    if smallest_class is not None and folds > smallest_class:
        raise ValueError(
            f"folds={folds} is more than the {smallest_class} images of the smallest class: every fold needs one of "
            f"each class; choose --data.folds={smallest_class} or fewer."
        )
    if not 0 <= fold < folds:
        raise ValueError(f"fold={fold} is not one of the {folds} folds: choose --data.fold from 0 to {folds - 1}.")


def training_subset(train: Tensor, labels: Tensor, train_subset: int | None, seed: int) -> Tensor:
    """``train_subset`` of the indices ``train``, seeded and stratified by ``labels``; all of them for None."""
    if train_subset is None or train_subset == len(train):
        return train
    _, subset = stratified_split(labels[train], train_subset, seed, "train_subset")
    return train[subset]


class InMemoryDataModule(L.LightningDataModule):
    """Base of the DataModules here: subclasses set the class attributes and implement ``load``.

    Args:
        val_size: number of training images held out (seeded, stratified) for validation.
        batch_size: images per batch.
        num_workers: DataLoader worker processes; 0 is fastest for data held in memory.
        seed: seed of the train/validation split, of ``train_subset`` and of the training images used for the gap.
        train_subset: train on this many images of the training split (seeded, stratified), for learning curves
            over the amount of data; validation and test images stay the same. None: the whole split.
        folds: k-fold cross-validation: the images outside the test set are split into this many stratified,
            seeded folds, and ``fold`` is the validation set (instead of ``val_size``). None: one val split.
        fold: which of the folds validates, 0 to folds - 1; the others train.
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

    def __init__(
        self,
        val_size: int,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        train_subset: int | None = None,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if val_size <= 0:
            raise ValueError(f"val_size must be a positive number of images, got {val_size}")
        if folds is None and fold != 0:
            raise ValueError(f"fold={fold} picks one of --data.folds, which is not given: add --data.folds=k.")
        held_out = val_size
        if folds is not None:
            default = inspect.signature(type(self)).parameters.get("val_size")
            if default is not None and val_size != default.default:
                raise ValueError(
                    f"val_size={val_size} and folds={folds} both choose the validation images: with --data.folds "
                    "the validation set is one fold (a k-th of the images outside the test set); leave val_size out."
                )
            check_folds(folds, fold, None if self.train_size is None else self.train_size // self.num_classes)
            held_out = 0 if self.train_size is None else -(-self.train_size // folds)  # the largest fold
        elif self.train_size is not None:
            check_holdout(val_size, self.train_size, "val_size")
        split = None if self.train_size is None else self.train_size - held_out
        check_train_subset(train_subset, split, self.num_classes)
        self.save_hyperparameters(logger=False)  # TensorBoardLayout logs them, with metrics

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return train images, train labels, test images, test labels: uint8 (N, C, H, W) and int64 (N,)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        if hasattr(self, "train_set"):  # fit, then test: load once
            return
        images, labels, test_images, test_labels = self.load()
        if self.hparams.folds is None:
            train, val = stratified_split(labels, self.hparams.val_size, self.hparams.seed, "val_size")
        else:
            train, val = fold_split(labels, self.hparams.folds, self.hparams.fold, self.hparams.seed)
        check_train_subset(self.hparams.train_subset, len(train), self.num_classes)
        train = training_subset(train, labels, self.hparams.train_subset, self.hparams.seed)
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if len(val) < world_size:  # else each rank's share of the images would be empty
            raise ValueError(
                f"val_size={len(val)} is smaller than the {world_size} processes that share the validation "
                f"images: choose --data.val_size={world_size} or more, or fewer --trainer.devices."
            )
        # The gap's training side is drawn from the images trained on: a subset is compared with itself.
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
            # Not persistent: every epoch's iterator draws its workers' base seed from the global
            # generator, as with num_workers=0. Persistent workers draw it once per process, so a
            # resumed run would draw once more than the run it continues, shifting every later mask.
            persistent_workers=False,
        )
