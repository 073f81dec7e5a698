"""DataModules: the in-memory base and split (base.py), the embedded digits (mnist5k.py), the
torchvision datasets (torchvision_datasets.py) with their file checks (files.py), and the batch
augmentations (augment.py); and your own image files for predict (image_files.py)."""

from dropout_lab.data.base import InMemoryDataModule, TensorBatches, stratified_split
from dropout_lab.data.image_files import ImageFilesDataModule
from dropout_lab.data.mnist5k import MNIST5kDataModule, ShiftedMNIST5kDataModule
from dropout_lab.data.torchvision_datasets import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule

__all__ = [
    "CIFAR10DataModule",
    "FashionMNISTDataModule",
    "ImageFilesDataModule",
    "InMemoryDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "ShiftedMNIST5kDataModule",
    "TensorBatches",
    "stratified_split",
]
