"""--data.augment=true on the digit DataModules: a random affine transform per image, on training batches only."""

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml

from dropout_lab import FashionMNISTDataModule, MNIST5kDataModule, MNISTDataModule
from dropout_lab.cli import DropoutLabCLI
from dropout_lab.data.augment import AffineBatches, FlippedAffineBatches, random_affine
from dropout_lab.data.base import TensorBatches
from dropout_lab.nets import MLP


def setup_data(**kwargs) -> MNIST5kDataModule:
    data = MNIST5kDataModule(**kwargs)
    data.setup("fit")
    return data


def normalized(dataset: TensorBatches) -> torch.Tensor:
    """The images of ``dataset`` as an unaugmented batch would hold them."""
    return (dataset.images.float() / 255 - dataset.mean) / dataset.std


def whole(dataset: TensorBatches) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.__getitems__(list(range(len(dataset))))


def test_two_identical_images_in_one_batch_get_different_transforms():
    data = setup_data(augment=True)
    x, _ = data.train_set.__getitems__([7] * 8)
    assert all(not torch.allclose(x[0], x[i]) for i in range(1, 8))


def test_augmentation_changes_training_batches_only():
    data = setup_data(augment=True, batch_size=1000)
    x, y = next(iter(data.train_dataloader()))
    assert isinstance(data.train_set, AffineBatches) and x.shape == (1000, 1, 28, 28)
    changed = ~torch.isclose(x, normalized(data.train_set)[: len(x)]).flatten(1).all(1)
    assert changed.float().mean() > 0.99  # not just a few images: (nearly) every one is moved
    loaders = [*data.val_dataloader(), data.test_dataloader()]
    for loader, dataset in zip(loaders, [data.val_set, data.train_eval_set, data.test_set], strict=True):
        x, y = next(iter(loader))
        assert torch.equal(x, normalized(dataset)[: len(x)]) and torch.equal(y, dataset.labels[: len(y)])


def test_augment_false_serves_training_images_as_they_are():
    data = setup_data(batch_size=1000)
    assert type(data.train_set) is TensorBatches
    x, y = whole(data.train_set)
    assert torch.equal(x, normalized(data.train_set)) and torch.equal(y, data.train_set.labels)


def test_augmented_digits_are_still_recognized_by_a_model_trained_without_augmentation():
    # Label-preserving in the sense that matters: a 3 moved a little is still read as a 3, by a
    # model that never saw a moved digit. (A transform that destroyed the digit would give 0.1.)
    torch.manual_seed(0)
    plain, augmented = setup_data(), setup_data(augment=True)
    x, y = whole(plain.train_set)
    net = MLP((1, 28, 28), 10, hidden=(256,), dropout=0.0, input_dropout=0.0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(3):
        for batch in torch.randperm(len(y)).split(100):
            loss = F.cross_entropy(net(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        clean_acc = (net(x).argmax(1) == y).float().mean()
        x_aug, y_aug = whole(augmented.train_set)
        augmented_acc = (net(x_aug).argmax(1) == y_aug).float().mean()
    # Measured: 0.96 on the images as they are, 0.69 augmented (an MLP has no translation invariance).
    assert clean_acc > 0.9 and 0.5 < augmented_acc < clean_acc


def test_augmentation_is_deterministic_under_a_seed():
    data = setup_data(augment=True, batch_size=256)

    def first_batch(seed: int) -> torch.Tensor:
        L.seed_everything(seed, verbose=False)
        return next(iter(data.train_dataloader()))[0]

    assert torch.equal(first_batch(3), first_batch(3))
    assert not torch.equal(first_batch(3), first_batch(4))


def test_digits_are_never_flipped_and_fashion_may_be():
    images = torch.zeros(64, 1, 28, 28, dtype=torch.uint8)
    images[:, :, 5:20, 3:9] = 255  # a bar on the left
    torch.manual_seed(0)
    still = random_affine(images, degrees=0, scale=0, shift=0, flip=False)
    torch.testing.assert_close(still, images.float(), atol=1e-3, rtol=0)
    flipped = random_affine(images, degrees=0, scale=0, shift=0, flip=True)
    mirrored = torch.isclose(flipped, images.flip(-1).float(), atol=1e-3).flatten(1).all(1)
    assert 10 < mirrored.sum() < 54  # about half, each image drawing its own
    assert MNISTDataModule(augment=True).batches is AffineBatches and not AffineBatches.flip
    assert FashionMNISTDataModule(augment=True).batches is FlippedAffineBatches
    assert MNISTDataModule().batches is TensorBatches


@pytest.mark.parametrize("augment", [False, True])
def test_affine_transform_stays_within_its_bounds(augment):
    # A shift of at most 2 pixels, rotation of 10 degrees and scale of 10 %: the centre of mass of
    # a digit moves by a few pixels, never across the image.
    data = setup_data(augment=augment)
    x, _ = whole(data.train_set)
    plain = normalized(data.train_set)

    def centre(batch: torch.Tensor) -> torch.Tensor:
        ink = (batch - batch.amin()).squeeze(1)
        grid = torch.arange(28.0)
        return torch.stack([(ink.sum(2) * grid).sum(1), (ink.sum(1) * grid).sum(1)], 1) / ink.sum((1, 2)).unsqueeze(1)

    moved = (centre(x) - centre(plain)).abs()
    assert moved.max() < 5 and (moved.mean() > 0.5) == augment


@pytest.mark.parametrize("data", ["MNIST5kDataModule", "MNISTDataModule", "FashionMNISTDataModule"])
def test_augment_is_a_flag_of_each_digit_datamodule(data, capsys):
    with pytest.raises(SystemExit) as exit_:
        DropoutLabCLI([f"--data={data}", "--data.augment=true", "--print_config"])
    assert exit_.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["data"]["class_path"] == f"dropout_lab.{data}" and config["data"]["init_args"]["augment"] is True
