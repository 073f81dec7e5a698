"""dropout_lab: regularization by dropout, as a PyTorch Lightning template."""

from dropout_lab.callbacks import GeneralizationGap, TensorBoardLayout
from dropout_lab.classifier import Classifier, CNNClassifier, MLPClassifier
from dropout_lab.data import InMemoryDataModule, MNIST5kDataModule
from dropout_lab.dropout import CustomDropout, CustomDropout2d

__all__ = [
    "CNNClassifier",
    "Classifier",
    "CustomDropout",
    "CustomDropout2d",
    "GeneralizationGap",
    "InMemoryDataModule",
    "MLPClassifier",
    "MNIST5kDataModule",
    "TensorBoardLayout",
]
