"""k-fold cross-validation: --data.folds=k --data.fold=i, and tune.py --tune.folds=k over a grid."""

import pytest
import torch

from dropout_lab import MNIST5kDataModule


def fold_data(folds: int, fold: int, **kwargs) -> MNIST5kDataModule:
    data = MNIST5kDataModule(folds=folds, fold=fold, **kwargs)
    data.setup("fit")
    return data


def image_keys(images: torch.Tensor) -> list[bytes]:
    """Each image's bytes: the embedded digits are all different, so an image names itself."""
    return [image.numpy().tobytes() for image in images]


@pytest.mark.parametrize("folds", [2, 5])
def test_the_folds_are_disjoint_and_validate_every_pool_image_once(folds):
    splits = [fold_data(folds, fold) for fold in range(folds)]
    pool = image_keys(splits[0].train_set.images) + image_keys(splits[0].val_set.images)
    assert len(set(pool)) == len(pool) == 4500  # every image outside the test set, once
    validated = [key for data in splits for key in image_keys(data.val_set.images)]
    assert sorted(validated) == sorted(pool)  # each pool image validated exactly once
    for data in splits:
        trained, held = set(image_keys(data.train_set.images)), set(image_keys(data.val_set.images))
        assert not trained & held and len(trained) + len(held) == len(pool)
        assert set(image_keys(data.train_eval_set.images)) <= trained  # the gap's training side: trained images


def test_every_fold_holds_its_share_of_each_class():
    for fold in range(4):
        counts = torch.bincount(fold_data(4, fold).val_set.labels, minlength=10)
        assert counts.min() >= 450 // 4 and counts.max() <= -(-450 // 4)  # 450 training digits per class


def test_the_test_set_is_the_same_in_every_fold_and_the_folds_the_same_every_time():
    first, again, other = fold_data(3, 0), fold_data(3, 0), fold_data(3, 2)
    default = MNIST5kDataModule()
    default.setup("fit")
    assert torch.equal(first.test_set.images, other.test_set.images)
    assert torch.equal(first.test_set.images, default.test_set.images)  # as without folds
    assert torch.equal(first.val_set.images, again.val_set.images)  # seeded: every DDP rank and a resume agree
    assert torch.equal(first.train_set.images, again.train_set.images)


def test_train_subset_draws_from_the_folds_training_part():
    data = fold_data(5, 3, train_subset=200)
    assert len(data.train_set) == 200 and len(data.val_set) == 900
    assert set(image_keys(data.train_set.images)) <= set(image_keys(fold_data(5, 3).train_set.images))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"folds": 1}, r"folds=1: k-fold cross-validation needs --data.folds=2 or more"),
        ({"folds": 451}, r"folds=451 is more than the 450 images of the smallest class"),
        ({"folds": 5, "fold": 5}, r"fold=5 is not one of the 5 folds: choose --data.fold from 0 to 4"),
        ({"folds": 5, "fold": -1}, r"fold=-1 is not one of the 5 folds"),
        ({"fold": 2}, r"fold=2 picks one of --data.folds, which is not given"),
        ({"folds": 5, "val_size": 300}, r"val_size=300 and folds=5 both choose the validation images"),
        ({"folds": 2.5}, r"folds must be an integer"),
    ],
)
def test_bad_fold_settings_are_refused_in_one_line_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message) as error:
        MNIST5kDataModule(**kwargs)
    assert "\n" not in str(error.value)
