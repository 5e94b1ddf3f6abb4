"""The host env's data: fixed train/validation image arrays, resident on device (docs/environment.md#oracles).

``load_digits()`` is the default: scikit-learn's 8×8 grey digits (1,797 images, shipped inside the scikit-learn
wheel, nothing downloaded), scaled to [0, 1], NHWC ``[N, 8, 8, 1]``, split once with a fixed stratified split
(1,437 train / 360 validation).

Any other image set plugs in through ``from_arrays``: images ``[N, H, W, C]`` float (already scaled/normalised as
you want the host to see them), labels ``[N]`` int in ``[0, num_classes)``. For CIFAR-10 arrays a user already has
(e.g. ``x_train`` uint8 ``[50000, 32, 32, 3]``)::

    mean = np.array([0.4914, 0.4822, 0.4465]); std = np.array([0.2470, 0.2435, 0.2616])
    data = from_arrays((x_train / 255.0 - mean) / std, y_train, (x_test / 255.0 - mean) / std, y_test)
    env = esper_jax.env.make("host", EnvConfig(task="cifar10"), dataset=data)

H and W must be divisible by 2**pool_layers of the task. The arrays are closed over by the compiled step as
constants, so keep them to what fits comfortably in device memory (a CIFAR-10 subset of a few thousand images is
the practical size on a CPU).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

DIGITS_VAL_PER_CLASS = 36  # 10 classes × 36 = 360 validation images


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train and validation arrays (numpy, float32 images NHWC, int32 labels). Equality and hash are by content
    (a fingerprint), so two environments built on the same data share compiled functions."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    num_classes: int
    fingerprint: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_train(self) -> int:
        return int(self.train_images.shape[0])

    @property
    def num_val(self) -> int:
        return int(self.val_images.shape[0])

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Dataset) and other.fingerprint == self.fingerprint


def _check_images(name: str, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or min(images.shape) < 1:
        raise ValueError(f"{name} must be images [N, H, W, C] (NHWC), got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"{name} must be a float array (scale it first), got dtype {images.dtype}")
    if not np.all(np.isfinite(images)):
        raise ValueError(f"{name} contains NaN or inf")
    return images.astype(np.float32)


def _check_labels(name: str, labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{name} must be [N] = [{n}] labels matching its images, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be integer class ids, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int32)


def from_arrays(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    num_classes: int = 10,
) -> Dataset:
    """A ``Dataset`` from user arrays: images ``[N, H, W, C]`` float, labels ``[N]`` int in ``[0, num_classes)``."""
    train_images = _check_images("train_images", train_images)
    val_images = _check_images("val_images", val_images)
    if train_images.shape[1:] != val_images.shape[1:]:
        raise ValueError(
            f"train_images and val_images must share [H, W, C], got {train_images.shape[1:]} and {val_images.shape[1:]}"
        )
    train_labels = _check_labels("train_labels", train_labels, train_images.shape[0], num_classes)
    val_labels = _check_labels("val_labels", val_labels, val_images.shape[0], num_classes)
    digest = hashlib.sha1()
    for array in (train_images, train_labels, val_images, val_labels):
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return Dataset(train_images, train_labels, val_images, val_labels, int(num_classes), digest.hexdigest())


def load_digits(val_per_class: int = DIGITS_VAL_PER_CLASS, seed: int = 0) -> Dataset:
    """scikit-learn's digits, [0, 1]-scaled ``[N, 8, 8, 1]``, with ``val_per_class`` images of each class held out
    for validation (a fixed stratified split: the same for every env and every run with the same ``seed``)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    val_index = np.concatenate([
        rng.choice(np.flatnonzero(labels == c), size=val_per_class, replace=False) for c in range(10)
    ])
    is_val = np.zeros(labels.shape[0], bool)
    is_val[val_index] = True
    return from_arrays(images[~is_val], labels[~is_val], images[is_val], labels[is_val], num_classes=10)
