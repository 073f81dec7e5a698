"""Using a trained classifier: ``python train.py predict``'s CSV, and ``load_classifier`` for Python.

The CSV has one row per image, written as the batches come.

Columns: ``index``, ``path`` (for ImageFilesDataModule: the image file), ``target`` (where the data
has labels), ``prediction``, ``confidence`` (the top probability), ``entropy`` (of the mean predicted
distribution, nats), ``mutual_information`` (with ``mc_samples`` > 1), then ``p_0`` ... ``p_{K-1}``.
"""

import csv
import importlib
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from dropout_lab.checkpointing import load_checked
from dropout_lab.classifier import Classifier
from dropout_lab.data.image_files import ImageFilesDataModule


def load_classifier(path: str | Path, map_location: str = "cpu") -> Classifier:
    """The classifier saved in a checkpoint of ``train.py``, of the class it names, for ``predict_proba``."""
    class_path = load_checked(path).get("hyper_parameters", {}).get("_class_path")
    if class_path is None:
        raise ValueError(f"{path} names no model class: load it with YourClassifier.load_from_checkpoint(path)")
    module, _, name = class_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name)
    return model_class.load_from_checkpoint(path, map_location=map_location, weights_only=True)


class PredictionCSV(BasePredictionWriter):
    """Write ``Classifier.predict_step``'s outputs to ``path``; None: ``predictions.csv`` in the run folder."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path) if path else None
        self.file = self.writer = None
        self.rows = 0

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            raise ValueError("predict writes one CSV from one process: run it with --trainer.devices=1")
        # Opened before the first batch: a folder that cannot be created fails before any work is done.
        self.path = self.path or Path(trainer.log_dir or ".") / "predictions.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w", newline="")  # noqa: SIM115 (closed in on_predict_end)
        self.writer = csv.writer(self.file)
        self.rows = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        probs = prediction["probs"].float().cpu()
        predicted = probs.argmax(dim=-1)
        # Image files: which file each row is, as ImageFilesDataModule found it.
        files = trainer.datamodule.files if isinstance(trainer.datamodule, ImageFilesDataModule) else None
        columns = {
            "index": batch_indices,
            "path": [str(files[i]) for i in batch_indices] if files else None,
            "target": prediction["target"].tolist() if "target" in prediction else None,
            "prediction": predicted.tolist(),
            "confidence": prediction["max_prob"].tolist(),
            "entropy": prediction["entropy"].tolist(),
            "mutual_information": prediction["mutual_information"].tolist()
            if "mutual_information" in prediction
            else None,
        }
        columns = {name: values for name, values in columns.items() if values is not None}
        if self.rows == 0:
            self.writer.writerow([*columns, *(f"p_{k}" for k in range(probs.shape[-1]))])
        for i, p in enumerate(probs.tolist()):
            self.writer.writerow([*(fmt(values[i]) for values in columns.values()), *(fmt(v) for v in p)])
        self.rows += len(probs)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.file.close()
        print(f"Predictions for {self.rows} images: {self.path}")


def fmt(value: float | int) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
