"""MNIST, Fashion-MNIST and CIFAR-10 DataModules, run over tiny datasets written in the real on-disk formats.

No network: the files are made here, in tmp_path, as torchvision expects them (IDX files in
ROOT/MNIST/raw/, pickled batches in ROOT/cifar-10-batches-py/). torchvision checks the MD5 sum
of every CIFAR-10 file against its own table; the tiny files have other sums, so the tests
point that table at them (the MD5 check itself is tested with a truncated file).
"""

import gzip
import hashlib
import importlib.util
import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import yaml
from conftest import QUICK, ROOT, run_train
from torchvision import datasets

from dropout_lab import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule
from dropout_lab.cli import DropoutLabCLI

N_TRAIN, N_TEST, VAL_SIZE = 200, 50, 50  # 20 and 5 images per class; 5 per class held out


def fake_split(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and shuffled labels with the same number of images in each of 10 classes."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), rng.permutation(np.arange(n) % 10).astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, the format of the (extracted) MNIST downloads."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.tobytes())


def write_mnist(root: Path, dataset: type[datasets.MNIST]) -> dict[str, np.ndarray]:
    """Write the four extracted files torchvision reads from ROOT/<dataset>/raw/."""
    raw = root / dataset.__name__ / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for split, n, seed in [("train", N_TRAIN, 1), ("t10k", N_TEST, 2)]:
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = fake_split(n, (28, 28), seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", arrays[f"{split}_images"])
        write_idx(raw / f"{split}-labels-idx1-ubyte", arrays[f"{split}_labels"])
    return {"train": arrays["train_images"][:, None], "train_labels": arrays["train_labels"],
            "test": arrays["t10k_images"][:, None], "test_labels": arrays["t10k_labels"]}  # fmt: skip


def write_cifar10(root: Path) -> tuple[dict[str, np.ndarray], dict]:
    """Write the pickled batches of cifar-10-batches-py/; return the arrays and the MD5 table of these files."""
    folder = root / datasets.CIFAR10.base_folder
    folder.mkdir(parents=True)
    images, labels = fake_split(N_TRAIN, (3, 32, 32), 1)
    test_images, test_labels = fake_split(N_TEST, (3, 32, 32), 2)
    # Five training batches and one test batch: rows of 3072 bytes, the red plane first.
    batches = {f"data_batch_{i + 1}": part for i, part in enumerate(np.array_split(np.arange(N_TRAIN), 5))}
    for name, rows in batches.items():
        entry = {"batch_label": name, "labels": labels[rows].tolist(), "data": images[rows].reshape(len(rows), -1)}
        (folder / name).write_bytes(pickle.dumps(entry))
    entry = {"batch_label": "test", "labels": test_labels.tolist(), "data": test_images.reshape(N_TEST, -1)}
    (folder / "test_batch").write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class {i}" for i in range(10)]}))
    md5 = {path.name: hashlib.md5(path.read_bytes()).hexdigest() for path in folder.iterdir()}
    table = {
        "train_list": [[name, md5[name]] for name in batches],
        "test_list": [["test_batch", md5["test_batch"]]],
        "meta": {**datasets.CIFAR10.meta, "md5": md5["batches.meta"]},
    }
    arrays = {"train": images, "train_labels": labels, "test": test_images, "test_labels": test_labels}
    return arrays, table


DATAMODULES = [MNISTDataModule, FashionMNISTDataModule, CIFAR10DataModule]
ids = [cls.__name__ for cls in DATAMODULES]


def write_files(cls: type, root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Write the fake dataset of ``cls`` under ``root``; return its arrays."""
    if cls is CIFAR10DataModule:
        arrays, table = write_cifar10(root)
        for name, value in table.items():
            monkeypatch.setattr(datasets.CIFAR10, name, value)
        return arrays
    return write_mnist(root, cls.dataset)


@pytest.fixture(params=DATAMODULES, ids=ids)
def fake(request, tmp_path, monkeypatch):
    """(DataModule class, data folder, arrays written), for each of the three datasets."""
    cls = request.param
    return cls, tmp_path, write_files(cls, tmp_path, monkeypatch)


def setup_data(cls: type, root: Path, download: bool = False, **kwargs):
    """prepare_data and setup as Lightning calls them, on the files in ``root``."""
    data = cls(data_dir=str(root), download=download, val_size=VAL_SIZE, **kwargs)
    data.prepare_data()
    data.setup("fit")
    return data


def image_bytes(images) -> set[bytes]:
    """Identify images by their bytes, to compare splits without trusting any index bookkeeping."""
    return {image.tobytes() for image in np.asarray(images)}


def normalized(images: np.ndarray, data) -> torch.Tensor:
    """The expected model input: pixel / 255, minus the channel mean, over the channel std."""
    mean, std = torch.tensor(data.mean).view(-1, 1, 1), torch.tensor(data.std).view(-1, 1, 1)
    return (torch.from_numpy(images).float() / 255 - mean) / std


def test_datamodule_reads_torchvisions_files_with_the_right_shapes(fake):
    cls, root, arrays = fake
    data = setup_data(cls, root, batch_size=16)
    channels = 3 if cls is CIFAR10DataModule else 1
    size = 32 if cls is CIFAR10DataModule else 28
    assert data.input_shape == (channels, size, size) and data.num_classes == 10
    assert len(data.train_set) + len(data.val_set) == N_TRAIN and len(data.test_set) == N_TEST
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (16, channels, size, size) and x.dtype == torch.float32
    assert y.shape == (16,) and y.dtype == torch.int64
    # The test split is the official test set, image for image, label for label (channel order included).
    assert torch.equal(data.test_set.images, torch.from_numpy(arrays["test"]))
    assert torch.equal(data.test_set.labels, torch.from_numpy(arrays["test_labels"]).long())


def test_folder_is_where_torchvision_reads(fake):
    cls, root, _ = fake
    data = cls(data_dir=str(root))
    dataset = cls.dataset(str(root), train=False)
    expected = dataset.raw_folder if cls is not CIFAR10DataModule else Path(dataset.root, dataset.base_folder)
    assert data.folder == Path(expected)


def test_splits_are_disjoint_stratified_and_seeded(fake):
    cls, root, arrays = fake
    data = setup_data(cls, root)
    train, val = image_bytes(data.train_set.images), image_bytes(data.val_set.images)
    assert len(train) + len(val) == N_TRAIN and not train & val
    assert train | val == image_bytes(arrays["train"])  # both come from the official training set
    assert image_bytes(data.train_eval_set.images) <= train and len(data.train_eval_set) == VAL_SIZE
    assert torch.bincount(data.val_set.labels, minlength=10).tolist() == [VAL_SIZE // 10] * 10
    assert torch.bincount(data.train_set.labels, minlength=10).tolist() == [(N_TRAIN - VAL_SIZE) // 10] * 10
    again, other = setup_data(cls, root), setup_data(cls, root, seed=1)
    assert torch.equal(again.val_set.images, data.val_set.images)
    assert not torch.equal(other.val_set.images, data.val_set.images)


def test_every_loader_serves_normalized_images(fake):
    cls, root, _ = fake
    data = setup_data(cls, root, batch_size=1000)
    (val_x, val_y), (train_eval_x, _) = (next(iter(loader)) for loader in data.val_dataloader())
    torch.testing.assert_close(val_x, normalized(data.val_set.images.numpy(), data))
    assert torch.equal(val_y, data.val_set.labels)
    torch.testing.assert_close(train_eval_x, normalized(data.train_eval_set.images.numpy(), data))
    test_x, _ = next(iter(data.test_dataloader()))
    torch.testing.assert_close(test_x, normalized(data.test_set.images.numpy(), data))
    # One pixel by hand: value 255 in the first channel becomes (1 - mean) / std.
    data.test_set.images[0, 0, 0, 0] = 255
    x, _ = data.test_set[0]
    assert x[0, 0, 0].item() == pytest.approx((1 - data.mean[0]) / data.std[0])


def crop_and_flip(image: torch.Tensor, top: int, left: int, flip: bool, pad: int = 4) -> torch.Tensor:
    """The reference for one image, written the slow way."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=image.dtype)
    padded[:, pad : pad + h, pad : pad + w] = image
    crop = padded[:, top : top + h, left : left + w]
    return crop.flip(-1) if flip else crop


def test_cifar10_augments_training_batches_only_with_one_crop_and_flip_per_image(tmp_path, monkeypatch):
    write_files(CIFAR10DataModule, tmp_path, monkeypatch)
    torch.manual_seed(0)
    data = setup_data(CIFAR10DataModule, tmp_path, augment=True, batch_size=1000)
    x, _ = data.train_set.__getitems__(list(range(len(data.train_set))))
    originals = data.train_set.images
    assert not torch.allclose(x, normalized(originals.numpy(), data))
    found = set()
    for image, augmented in zip(originals, x, strict=True):
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.allclose(normalized(crop_and_flip(image, top, left, flip)[None].numpy(), data)[0], augmented)
        ]
        assert matches, "an augmented image is no crop of the padded (and maybe flipped) original"
        found.add(matches[0])
    assert len(found) > 20  # each image draws its own crop and flip, not one for the batch
    assert {flip for _, _, flip in found} == {False, True}
    # Validation, train_eval and test images are served as they are.
    (val_x, _), (train_eval_x, _) = (next(iter(loader)) for loader in data.val_dataloader())
    torch.testing.assert_close(val_x, normalized(data.val_set.images.numpy(), data))
    torch.testing.assert_close(train_eval_x, normalized(data.train_eval_set.images.numpy(), data))
    test_x, _ = next(iter(data.test_dataloader()))
    torch.testing.assert_close(test_x, normalized(data.test_set.images.numpy(), data))


def test_cifar10_without_augment_serves_training_images_as_they_are(tmp_path, monkeypatch):
    write_files(CIFAR10DataModule, tmp_path, monkeypatch)
    data = setup_data(CIFAR10DataModule, tmp_path, batch_size=1000)
    x, _ = data.train_set.__getitems__(list(range(len(data.train_set))))
    torch.testing.assert_close(x, normalized(data.train_set.images.numpy(), data))


def expected_files(cls: type) -> list[str]:
    if cls is CIFAR10DataModule:
        return [name for name, _ in cls.dataset.train_list + cls.dataset.test_list] + ["batches.meta"]
    return ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


@pytest.mark.parametrize("cls", DATAMODULES, ids=ids)
def test_missing_files_without_download_say_where_what_and_how(cls, tmp_path):
    data = cls(data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(FileNotFoundError) as error:
        data.prepare_data()
    message = str(error.value)
    assert cls.dataset.__name__ in message and str(data.folder) in message
    assert all(name in message for name in expected_files(cls))
    assert "--data.download=false" in message and "--data.download=true" in message and "copy" in message
    with pytest.raises(FileNotFoundError, match="Missing"):  # setup() on any rank fails the same way
        data.setup("fit")


def offline(*args, **kwargs):
    raise URLError("no network here")


@pytest.mark.parametrize("cls", DATAMODULES, ids=ids)
def test_download_without_network_says_so_instead_of_a_network_traceback(cls, tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", offline)  # what torchvision's downloader calls
    data = cls(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        data.prepare_data()
    message = str(error.value)
    assert "the download failed" in message and "no network here" in message
    assert all(name in message for name in expected_files(cls)) and str(data.folder) in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("cls", DATAMODULES, ids=ids)
def test_a_failed_download_leaves_no_folder_it_made_and_every_file_that_was_there(cls, tmp_path, monkeypatch):
    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(FileNotFoundError):
        cls(data_dir=str(tmp_path / "new" / "data")).prepare_data()
    assert not (tmp_path / "new").exists()  # torchvision had made new/data/MNIST/raw (or new/data) before failing
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("mine")
    with pytest.raises(FileNotFoundError):
        cls(data_dir=str(tmp_path / "data")).prepare_data()
    assert [path.name for path in (tmp_path / "data").iterdir()] == ["notes.txt"]


def test_train_py_without_network_says_so_in_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    monkeypatch.setattr("urllib.request.urlopen", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        train.main(["--data=MNISTDataModule", *QUICK, f"--trainer.default_root_dir={tmp_path / 'runs'}"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: MNIST files not found in data/MNIST/raw/ (the download failed")
    assert list(tmp_path.iterdir()) == []  # no data/MNIST/raw, no run folder


def test_original_archives_put_in_place_are_extracted_without_network(tmp_path, monkeypatch):
    # The error message offers this way too: the .gz downloads, copied into the raw folder.
    arrays = write_files(MNISTDataModule, tmp_path, monkeypatch)
    raw = tmp_path / "MNIST" / "raw"
    resources = []
    for path in sorted(raw.iterdir()):
        archive = path.with_name(path.name + ".gz")
        archive.write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
        resources.append((archive.name, hashlib.md5(archive.read_bytes()).hexdigest()))
    monkeypatch.setattr(datasets.MNIST, "resources", resources)  # the MD5 sums of these archives
    monkeypatch.setattr("urllib.request.urlopen", offline)
    data = setup_data(MNISTDataModule, tmp_path, download=True)
    assert torch.equal(data.test_set.images, torch.from_numpy(arrays["test"]))


def test_truncated_mnist_file_is_named_with_what_to_do(tmp_path, monkeypatch):
    write_files(MNISTDataModule, tmp_path, monkeypatch)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RuntimeError, match="train-images-idx3-ubyte is corrupt or truncated .* delete it"):
        setup_data(MNISTDataModule, tmp_path)


def test_truncated_cifar10_file_fails_its_md5_with_what_to_do(tmp_path, monkeypatch):
    write_files(CIFAR10DataModule, tmp_path, monkeypatch)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(RuntimeError, match="data_batch_3 is corrupt or truncated .*MD5.* delete it"):
        setup_data(CIFAR10DataModule, tmp_path)


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_config_parses_offline(dataset, model, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["train.py"])  # not pytest's own arguments
    with pytest.raises(SystemExit) as exit_:
        DropoutLabCLI(["--config", str(ROOT / "configs" / f"{model}_{dataset}.yaml"), "--print_config"])
    assert exit_.value.code == 0
    config = yaml.safe_load(capsys.readouterr().out)
    data_class = {"mnist": "MNISTDataModule", "fashion_mnist": "FashionMNISTDataModule", "cifar10": "CIFAR10DataModule"}
    assert config["data"]["class_path"].split(".")[-1] == data_class[dataset]
    assert config["model"]["class_path"].split(".")[-1] == f"{model.upper()}Classifier"
    assert config["data"]["init_args"]["download"] is True and config["trainer"]["max_epochs"] >= 10


@pytest.mark.slow
@pytest.mark.parametrize(
    "cls, model", [(MNISTDataModule, "MLPClassifier"), (FashionMNISTDataModule, "CNNClassifier"),
                   (CIFAR10DataModule, "CNNClassifier")], ids=ids)  # fmt: skip
def test_train_py_runs_on_the_files_offline(cls, model, tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_files(cls, root, monkeypatch)
    if cls is CIFAR10DataModule:
        # The subprocess has its own torchvision: give it the MD5 table of these files at startup.
        patch = tmp_path / "patch"
        patch.mkdir()
        lines = [
            f"datasets.CIFAR10.{name} = {getattr(datasets.CIFAR10, name)!r}"
            for name in ("train_list", "test_list", "meta")
        ]
        (patch / "sitecustomize.py").write_text("from torchvision import datasets\n" + "\n".join(lines) + "\n")
        monkeypatch.setenv("PYTHONPATH", str(patch))
    extra = ["--data.augment=true"] if cls is CIFAR10DataModule else []
    result = run_train(
        f"--model={model}", f"--data={cls.__name__}", f"--data.data_dir={root}", "--data.download=false",
        f"--data.val_size={VAL_SIZE}", "--data.batch_size=16", *extra, *QUICK, root=tmp_path / "runs")  # fmt: skip
    assert "test/acc" in result.stdout


@pytest.mark.parametrize(
    ("cls", "mean", "std"),
    [
        (MNISTDataModule, (0.1307,), (0.3081,)),
        (FashionMNISTDataModule, (0.2860,), (0.3530,)),
        (CIFAR10DataModule, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ],
)
def test_normalization_constants_are_those_of_each_training_set(cls, mean, std):
    # The per-channel mean and std of the official training images (MNIST5k's are checked on its data).
    assert (cls.mean, cls.std) == (mean, std)
