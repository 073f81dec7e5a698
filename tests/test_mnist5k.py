"""The embedded default data: 5,000 real MNIST digits, split offline, stratified and seeded."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from dropout_lab import MLPClassifier, MNIST5kDataModule


def setup_data(**kwargs) -> MNIST5kDataModule:
    data = MNIST5kDataModule(**kwargs)
    data.setup("fit")
    return data


def image_bytes(dataset) -> set[bytes]:
    """Identify images by their bytes, to compare splits without trusting any index bookkeeping."""
    return {image.numpy().tobytes() for image in dataset.images}


def test_splits_have_the_requested_sizes_and_are_disjoint():
    data = setup_data()
    sizes = [len(data.train_set), len(data.val_set), len(data.test_set)]
    assert sizes == [4000, 500, 500]
    train, val, test = (image_bytes(s) for s in (data.train_set, data.val_set, data.test_set))
    assert len(train) + len(val) + len(test) == 5000  # also: no duplicate images inside a split
    assert not (train & val or train & test or val & test)


def test_splits_are_stratified():
    data = setup_data()
    for dataset, per_class in [(data.train_set, 400), (data.val_set, 50), (data.test_set, 50)]:
        assert torch.bincount(dataset.labels, minlength=10).tolist() == [per_class] * 10


def test_train_eval_subset_is_training_data_as_large_as_val():
    data = setup_data()
    assert len(data.train_eval_set) == len(data.val_set)
    assert image_bytes(data.train_eval_set) <= image_bytes(data.train_set)


def test_split_is_fixed_by_the_seed():
    a, b, c = setup_data(seed=1), setup_data(seed=1), setup_data(seed=2)
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)


def test_batches_are_normalized_float_images_with_labels():
    data = setup_data(batch_size=32)
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    images = data.train_set.images.float() / 255
    normalized = (images - data.mean[0]) / data.std[0]
    assert abs(normalized.mean().item()) < 0.1 and abs(normalized.std().item() - 1) < 0.1


def test_val_dataloaders_are_val_then_train_eval_in_order():
    data = setup_data(batch_size=500)
    (val_x, val_y), (train_eval_x, _) = (next(iter(loader)) for loader in data.val_dataloader())
    expected = (data.val_set.images.float() / 255 - data.mean[0]) / data.std[0]
    torch.testing.assert_close(val_x, expected)
    assert torch.equal(val_y, data.val_set.labels)
    assert len(train_eval_x) == 500


def test_every_prefix_of_a_held_out_set_is_a_sample_of_every_class():
    # The embedded file is sorted by label: a held-out set in file order would start 0, 0, ..., and
    # limit_val_batches (or one DDP rank's share) would evaluate only the first digits.
    data = setup_data()
    for name in ("val_set", "train_eval_set", "test_set"):
        labels = getattr(data, name).labels
        for n in (64, 128):
            counts = torch.bincount(labels[:n], minlength=10)
            assert counts.min() >= n // 40 and counts.max() <= n // 4, (name, n, counts.tolist())


def test_training_batches_are_shuffled():
    torch.manual_seed(0)
    _, labels = next(iter(setup_data().train_dataloader()))
    assert len(labels.unique()) >= 8  # the training split itself is in label order


def test_normalized_training_images_have_mean_zero_and_unit_std():
    images, _ = setup_data().train_set[list(range(4000))]
    assert images.mean().item() == pytest.approx(0, abs=0.05)
    assert images.std().item() == pytest.approx(1, abs=0.1)


def test_val_size_smaller_than_the_number_of_processes_is_refused_clearly():
    data = MNIST5kDataModule(val_size=3)
    data.trainer = SimpleNamespace(world_size=4, global_rank=0)
    with pytest.raises(ValueError, match=r"val_size=3 is smaller than the 4 processes .* --data.val_size=4 or more"):
        data.setup("fit")


def test_a_limited_validation_gives_the_gap_of_the_full_one_on_fixed_weights(tmp_path):
    # The experiment: with the held-out images sorted by class, limit_val_batches=2 saw only zeros
    # and ones, the easiest digits, and the loss gap changed sign. Fixed weights, an overfit model (no
    # dropout, a clear gap), validated in full and on its first two batches.
    L.seed_everything(0, verbose=False)
    data = MNIST5kDataModule()
    model = MLPClassifier(hidden=[256], dropout=0.0, input_dropout=0.0)
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    L.Trainer(max_epochs=4, limit_val_batches=0, default_root_dir=tmp_path, **quiet).fit(model, data)

    def gap(limit) -> dict[str, float]:
        (val, train_eval) = L.Trainer(limit_val_batches=limit, **quiet).validate(model, data, verbose=False)
        return {
            "loss": val["val/loss"] - train_eval["train_eval/loss"],
            "acc": train_eval["train_eval/acc"] - val["val/acc"],
        }

    full, limited = gap(1.0), gap(2)
    assert full["loss"] > 0.05 and full["acc"] > 0  # the model does better on its training data
    assert limited["loss"] > 0 and limited["acc"] > 0  # and so says a limited validation
    assert limited["loss"] == pytest.approx(full["loss"], abs=0.05)
