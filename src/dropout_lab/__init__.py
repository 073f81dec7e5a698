"""dropout_lab: regularization by dropout, as a PyTorch Lightning template."""

from dropout_lab.callbacks import GeneralizationGap, TensorBoardLayout
from dropout_lab.classifier import Classifier, CNNClassifier, MLPClassifier
from dropout_lab.data import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    ImageFilesDataModule,
    InMemoryDataModule,
    MNIST5kDataModule,
    MNISTDataModule,
    ShiftedMNIST5kDataModule,
)
from dropout_lab.dropout import ConcreteDropout, ConcreteDropout2d, CustomDropout, CustomDropout2d
from dropout_lab.prediction import load_classifier

__all__ = [
    "CIFAR10DataModule",
    "CNNClassifier",
    "Classifier",
    "ConcreteDropout",
    "ConcreteDropout2d",
    "CustomDropout",
    "CustomDropout2d",
    "FashionMNISTDataModule",
    "GeneralizationGap",
    "ImageFilesDataModule",
    "InMemoryDataModule",
    "MLPClassifier",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "ShiftedMNIST5kDataModule",
    "TensorBoardLayout",
    "load_classifier",
]
