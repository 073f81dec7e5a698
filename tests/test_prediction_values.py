"""The numbers of ``train.py predict``'s CSV and of ``predict_proba``, recomputed here from the model's outputs."""

import csv

import lightning as L
import pytest
import torch

from dropout_lab import MLPClassifier, MNIST5kDataModule
from dropout_lab.prediction import PredictionCSV


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """In nats, written out here: -sum p log p, with 0 log 0 = 0."""
    return -(probs * probs.clamp_min(1e-30).log()).sum(dim=-1)


class RecordBatches(L.Callback):
    """Each predict batch, with the torch generator's state just before the step draws its dropout masks."""

    def __init__(self) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.batches.append((batch[0].clone(), torch.get_rng_state()))


@pytest.fixture(scope="module")
def data() -> MNIST5kDataModule:
    return MNIST5kDataModule(batch_size=8)


def test_csv_entropy_and_mutual_information_equal_a_recomputation_from_the_passes(tmp_path, data, capsys):
    torch.manual_seed(0)
    model = MLPClassifier(hidden=(32,), mc_samples=3)
    recorder = RecordBatches()
    path = tmp_path / "predictions.csv"
    trainer = L.Trainer(
        limit_predict_batches=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[PredictionCSV(str(path)), recorder],
    )
    L.seed_everything(5, verbose=False)
    trainer.predict(model, data, return_predictions=False)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert f"Predictions for {len(rows)} images" in capsys.readouterr().out
    assert len(rows) == 24  # 3 batches of 8

    # The CSV's own probabilities: its entropy column is the entropy of that mean distribution.
    probs = torch.tensor([[float(row[f"p_{k}"]) for k in range(10)] for row in rows])
    csv_entropy = torch.tensor([float(row["entropy"]) for row in rows])
    torch.testing.assert_close(csv_entropy, entropy(probs), atol=1e-4, rtol=0)

    # The passes themselves, redrawn with the step's masks.
    model.train()  # the MLP has no BatchNorm: train mode is "dropout layers on", as in the MC predict loop
    passes = []
    with torch.no_grad():
        for x, state in recorder.batches:
            torch.set_rng_state(state)
            passes.append(torch.stack([model(x).softmax(dim=-1) for _ in range(3)]))
    passes = torch.cat(passes, dim=1)  # (passes, images, classes)
    mean = passes.mean(dim=0)
    torch.testing.assert_close(probs, mean, atol=1e-5, rtol=0)
    information = entropy(mean) - entropy(passes).mean(dim=0)
    assert (information > 1e-3).all()  # the passes disagree: entropy and mean entropy of passes differ
    torch.testing.assert_close(csv_entropy, entropy(mean), atol=1e-4, rtol=0)
    csv_information = torch.tensor([float(row["mutual_information"]) for row in rows])
    torch.testing.assert_close(csv_information, information, atol=1e-4, rtol=0)


def test_predict_proba_is_the_eval_mode_softmax_of_the_datamodules_normalized_images(data):
    torch.manual_seed(0)
    model = MLPClassifier(hidden=(32,))
    data.setup("test")
    model.normalization = {"mean": list(data.mean), "std": list(data.std)}  # what a checkpoint of train.py holds
    images = data.test_set.images[:8]  # uint8, as a user passes them
    normalized, _ = data.test_set.__getitems__(list(range(8)))  # what the model saw in training and testing
    model.eval()  # the reference
    with torch.no_grad():
        expected = model(normalized).softmax(dim=-1)
    model.train()
    torch.testing.assert_close(model.predict_proba(images), expected)


def test_predict_proba_takes_the_models_mc_samples_by_default(data):
    torch.manual_seed(0)
    model = MLPClassifier(hidden=(32,), mc_samples=6)
    data.setup("test")
    model.normalization = {"mean": list(data.mean), "std": list(data.std)}
    images = data.test_set.images[:8]

    def probs(**kwargs) -> torch.Tensor:
        torch.manual_seed(1)
        return model.predict_proba(images, **kwargs)

    assert torch.equal(probs(), probs(mc_samples=6))
    assert not torch.allclose(probs(), probs(mc_samples=1))
