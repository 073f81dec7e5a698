"""Monte Carlo dropout: the test and predict loops sample with the dropout layers on, and only those."""

import csv
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from dropout_lab import Classifier, CustomDropout, ImageFilesDataModule, MLPClassifier, MNIST5kDataModule
from dropout_lab.checkpointing import RNGState
from dropout_lab.uncertainty import calibration_metrics, entropy, update_calibration

README = Path(__file__).resolve().parents[1] / "README.md"


class BatchNormClassifier(Classifier):
    """A user's model: BatchNorm, which must stay in eval mode while dropout samples."""

    def __init__(self, input_shape=(1, 28, 28), num_classes: int = 10, mc_samples: int = 1) -> None:
        super().__init__(num_classes, mc_samples=mc_samples)
        self.save_hyperparameters()
        layers = [nn.Linear(math.prod(input_shape), 32), nn.BatchNorm1d(32), CustomDropout(0.5), nn.Linear(32, 10)]
        self.net = nn.Sequential(nn.Flatten(), *layers)


class RecordModes(L.Callback):
    """Every module's ``training`` flag before each test and predict batch."""

    def __init__(self) -> None:
        self.modes: list[dict[str, bool]] = []

    def record(self, pl_module) -> None:
        self.modes.append({name: module.training for name, module in pl_module.named_modules()})

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.record(pl_module)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.record(pl_module)


def trainer(callbacks=()) -> L.Trainer:
    return L.Trainer(
        limit_test_batches=2,
        limit_predict_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
    )


def predict(model, data, seed: int = 0) -> list[dict]:
    L.seed_everything(seed, verbose=False)
    return trainer().predict(model, data)


@pytest.fixture(scope="module")
def data() -> MNIST5kDataModule:
    return MNIST5kDataModule(batch_size=16)


@pytest.mark.parametrize("loop", ["test", "predict"])
def test_mc_sampling_turns_on_only_dropout_and_the_loop_restores_every_mode(data, loop):
    model = BatchNormClassifier(mc_samples=4)
    model.net[1].eval()  # a mixed state before the loop, which it must give back unchanged
    before = {name: module.training for name, module in model.named_modules()}
    recorder = RecordModes()
    getattr(trainer([recorder]), loop)(model, data)

    assert len(recorder.modes) == 2
    for modes in recorder.modes:
        assert modes["net.3"] is True  # the CustomDropout layer samples
        assert [name for name, training in modes.items() if training] == ["net.3"]  # BatchNorm and all else: eval
    assert {name: module.training for name, module in model.named_modules()} == before


def test_mc_with_one_sample_is_the_eval_mode_forward_exactly(data):
    model = MLPClassifier(hidden=(32,), mc_samples=1)
    outputs = predict(model, data)
    data.setup("predict")
    images = data.test_set.__getitems__(list(range(32)))[0]
    model.eval()  # the test's reference; the template never switches by hand
    expected = model(images).softmax(dim=-1)
    assert torch.equal(torch.cat([out["probs"] for out in outputs]), expected)
    assert "mutual_information" not in outputs[0]


def test_mc_predictions_repeat_with_a_seed_and_differ_between_seeds(data):
    model = MLPClassifier(hidden=(32,), mc_samples=5)
    first, again, other = (torch.cat([o["probs"] for o in predict(model, data, s)]) for s in (1, 1, 2))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert torch.allclose(first.sum(dim=-1), torch.ones(len(first)))


def test_mc_predictions_from_a_checkpoint_follow_the_seed_not_the_checkpoints_random_state(tmp_path, data):
    # The checkpoint holds the training run's generator states (RNGState): predict must not restore them.
    fit = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, callbacks=[RNGState()],
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tmp_path)  # fmt: skip
    fit.fit(MLPClassifier(hidden=(32,)), data)
    fit.save_checkpoint(tmp_path / "run.ckpt")

    def predict_from_checkpoint(seed: int) -> torch.Tensor:
        L.seed_everything(seed, verbose=False)
        outputs = trainer([RNGState()]).predict(
            MLPClassifier(hidden=(32,), mc_samples=5), data, ckpt_path=tmp_path / "run.ckpt"
        )
        return torch.cat([out["probs"] for out in outputs])

    first, again, other = predict_from_checkpoint(1), predict_from_checkpoint(1), predict_from_checkpoint(2)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_mutual_information_is_zero_without_dropout_and_positive_with_it(data):
    without = MLPClassifier(hidden=(32,), dropout=0.0, input_dropout=0.0, mc_samples=5)
    information = torch.cat([o["mutual_information"] for o in predict(without, data)])
    assert torch.allclose(information, torch.zeros_like(information), atol=1e-6)
    with_dropout = MLPClassifier(hidden=(32,), dropout=0.5, mc_samples=5)
    assert (torch.cat([o["mutual_information"] for o in predict(with_dropout, data)]) > 1e-4).all()


def test_calibration_metrics_match_their_definitions():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    target = torch.tensor([0, 1, 1, 0])
    metrics = calibration_metrics(2, "test/")
    update_calibration(metrics, probs, target)
    values = metrics.compute()
    assert values["test/acc"] == pytest.approx(0.75)
    assert values["test/nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.8) + math.log(0.7)) / 4)
    assert values["test/brier"] == pytest.approx((0.02 + 0.72 + 0.08 + 0.18) / 4)
    # 15 bins of the top probability: 0.9, 0.6, 0.8, 0.7 each alone; |accuracy - confidence| weighted 1/4
    assert values["test/ece"] == pytest.approx((0.1 + 0.6 + 0.2 + 0.3) / 4)
    assert entropy(torch.tensor([[1.0, 0.0], [0.5, 0.5]])).tolist() == pytest.approx([0.0, math.log(2)])


@pytest.mark.parametrize("mc_samples", [0, -3, 2.5])
def test_mc_samples_below_one_is_refused_with_the_range(mc_samples):
    with pytest.raises(ValueError, match=r"mc_samples .* integer >= 1, got"):
        MLPClassifier(mc_samples=mc_samples)


def test_image_files_are_converted_normalized_and_predicted(tmp_path, data):
    from torchvision.io import write_jpeg, write_png

    data.setup("predict")
    digits = data.test_set.images[:3]
    write_png(digits[0], str(tmp_path / "a.png"))
    write_png(torch.nn.functional.interpolate(digits[1:2].float(), size=56).byte()[0], str(tmp_path / "b.png"))
    write_jpeg(digits[2].expand(3, -1, -1).contiguous(), str(tmp_path / "c.jpg"), quality=100)
    files = ImageFilesDataModule(str(tmp_path), input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,))
    assert [p.name for p in files.files] == ["a.png", "b.png", "c.jpg"]
    assert files.images.shape == (3, 1, 28, 28) and torch.equal(files.images[0], digits[0] / 255)
    inverted = ImageFilesDataModule(str(tmp_path / "a.png"), invert=True, input_shape=(1, 28, 28), mean=(0,), std=(1,))
    assert torch.equal(inverted.images[0], 1 - digits[0] / 255)
    (out,) = trainer().predict(MLPClassifier(hidden=(8,)), files)
    assert out["probs"].shape == (3, 10) and "target" not in out


def write_png_16bit(image: torch.Tensor, path: Path) -> None:
    """A 16-bit grayscale PNG of a uint8 (1, H, W) image: each value times 257, so 255 becomes 65535."""
    from PIL import Image  # torchvision 0.29's encode_png takes uint8 only

    Image.fromarray(image[0].numpy().astype("uint16") * 257).save(path)


def test_16_bit_and_8_bit_versions_of_a_picture_give_the_same_input(tmp_path, data):
    from torchvision.io import write_png

    data.setup("predict")
    digit = torch.nn.functional.interpolate(data.test_set.images[:1].float(), size=56).byte()[0]  # resized too
    write_png(digit, str(tmp_path / "a_8bit.png"))
    write_png_16bit(digit, tmp_path / "b_16bit.png")
    files = ImageFilesDataModule(str(tmp_path), input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,))
    assert files.images.dtype == torch.float32 and 0.99 < files.images.max() <= 1  # a folder mixing both is read
    assert torch.allclose(files.images[0], files.images[1], atol=1e-6)
    (inputs,) = files.predict_dataloader().dataset.__getitems__([0, 1])
    assert torch.allclose(inputs[0], inputs[1], atol=1e-5) and inputs.max() < 3  # (1 - 0.1307) / 0.3081 = 2.8


def test_a_text_file_named_png_is_named_as_not_an_image_in_one_line(tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(ValueError) as error:
        ImageFilesDataModule(str(tmp_path), input_shape=(1, 28, 28), mean=(0.1,), std=(0.3,))
    (line,) = str(error.value).splitlines()
    assert f"{tmp_path / 'notes.png'}: it is not an image" in line and ".cpp" not in line


def test_predictions_csv_names_each_image_file_by_its_path_as_given(tmp_path, monkeypatch, data):
    from torchvision.io import write_png

    from dropout_lab.prediction import PredictionCSV

    data.setup("predict")
    (tmp_path / "digits").mkdir()
    for name, digit in zip(["b.png", "a.png"], data.test_set.images[:2], strict=True):
        write_png(digit, str(tmp_path / "digits" / name))
    monkeypatch.chdir(tmp_path)
    files = ImageFilesDataModule("digits", batch_size=1, input_shape=(1, 28, 28), mean=(0.1,), std=(0.3,))
    trainer([PredictionCSV("p.csv")]).predict(MLPClassifier(hidden=(8,)), files)
    with open("p.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:3] == ["index", "path", "prediction"]
    assert [(row["index"], row["path"]) for row in rows] == [("0", "digits/a.png"), ("1", "digits/b.png")]


def test_an_unreadable_image_is_named(tmp_path):
    (tmp_path / "fine.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot read the image .*fine.png"):
        ImageFilesDataModule(str(tmp_path / "*.png"), input_shape=(1, 28, 28), mean=(0.1,), std=(0.3,))
    with pytest.raises(ValueError, match="names no image file"):
        ImageFilesDataModule(str(tmp_path / "*.jpg"), input_shape=(1, 28, 28), mean=(0.1,), std=(0.3,))


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    from dropout_lab.cli import DropoutLabCLI

    monkeypatch.chdir(tmp_path)
    cli = DropoutLabCLI(
        ["--model.hidden=[16]", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
        + ["--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false"]
    )
    cli.trainer.fit(cli.model, cli.datamodule)
    (snippet,) = re.findall(r"```python\n(# From Python.*?)```", README.read_text(), re.DOTALL)
    scope: dict = {}
    exec(snippet, scope)
    probs, probs_mc = scope["probs"], scope["probs_mc"]
    assert probs.shape == probs_mc.shape == (8, 10)
    assert torch.allclose(probs.sum(dim=1), torch.ones(8)) and not torch.allclose(probs, probs_mc)
    model = scope["model"]
    assert all(module.training for module in model.modules())  # as loaded: predict_proba restored the modes
    assert torch.equal(model.predict_proba(scope["images"]), probs)  # the deterministic pass repeats
