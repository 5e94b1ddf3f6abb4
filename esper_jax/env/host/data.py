"""The host env's data: fixed train/validation image arrays, resident on device (docs/environment.md#oracles).

* ``load_digits()``: scikit-learn's 8×8 grey digits (1,797 images, shipped inside the scikit-learn wheel, nothing
  downloaded), scaled to [0, 1], NHWC ``[N, 8, 8, 1]``, split once with a fixed stratified split (1,437 train /
  360 validation). The ``digits`` task.
* ``load_cifar10(path)``: CIFAR-10 from the official python-pickle files (``cifar_files.py``), 50k train / 10k
  test (the validation split, as upstream), kept as uint8 ``[N, 32, 32, 3]`` and normalised inside the step with
  upstream's per-channel mean/std. The ``cifar10`` task.
* ``from_arrays`` (float images, used as given) and ``from_uint8`` (uint8 images with a per-channel mean/std) for
  any other image set: images ``[N, H, W, C]``, labels ``[N]`` int in ``[0, num_classes)``::

      data = from_uint8(x_train, y_train, x_test, y_test, mean=CIFAR10_MEAN, std=CIFAR10_STD)
      env = esper_jax.env.make("host", EnvConfig(task="cifar10"), dataset=data)

H and W must be divisible by 2**pool_layers of the task. The arrays travel to the device once
(``Dataset.device_arrays``); compiled code that binds them (``EsperEnv.bind``) takes them as arguments, code that
does not closes over them as constants, which is fine for digits and slow to compile for 50k CIFAR images.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

DIGITS_VAL_PER_CLASS = 36  # 10 classes × 36 = 360 validation images
# Upstream's torchvision Normalize constants (src/esper/utils/data.py), applied to x / 255.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@struct.dataclass
class DeviceData:
    """The dataset's arrays on device (a pytree: compiled code may take it as an argument)."""

    train_images: jnp.ndarray  # uint8 or float32 [N, H, W, C]
    train_labels: jnp.ndarray  # int32 [N]
    val_images: jnp.ndarray
    val_labels: jnp.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Train and validation arrays (numpy NHWC images, int32 labels). Images are float32 (used as given) or uint8
    with a per-channel ``mean``/``std`` (the host sees (x / 255 − mean) / std, computed inside the step).
    Equality and hash are by content (a fingerprint), so two environments built on the same data share compiled
    functions."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    num_classes: int
    fingerprint: str
    mean: tuple[float, ...] | None = None  # uint8 images only
    std: tuple[float, ...] | None = None

    def normalise(self, images: jnp.ndarray) -> jnp.ndarray:
        """float32 images the host sees, from a batch of stored images (inside jit)."""
        if self.mean is None:
            return images.astype(jnp.float32)
        mean = jnp.asarray(self.mean, jnp.float32)
        std = jnp.asarray(self.std, jnp.float32)
        return (images.astype(jnp.float32) / 255.0 - mean) / std

    def device_arrays(self) -> DeviceData:
        """The arrays on the default device, transferred once per dataset."""
        return _device_arrays(self)

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


@functools.lru_cache(maxsize=4)
def _device_arrays(data: Dataset) -> DeviceData:
    with jax.ensure_compile_time_eval():  # concrete arrays even when first asked for inside a trace (cached)
        return DeviceData(
            train_images=jnp.asarray(data.train_images), train_labels=jnp.asarray(data.train_labels),
            val_images=jnp.asarray(data.val_images), val_labels=jnp.asarray(data.val_labels),
        )


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
    return _dataset(train_images, train_labels, val_images, val_labels, num_classes)


def _dataset(train_images, train_labels, val_images, val_labels, num_classes, mean=None, std=None) -> Dataset:
    digest = hashlib.sha1(repr((mean, std)).encode())
    for array in (train_images, train_labels, val_images, val_labels):
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return Dataset(
        train_images, train_labels, val_images, val_labels, int(num_classes), digest.hexdigest(), mean, std
    )


def _check_uint8(name: str, images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or min(images.shape) < 1:
        raise ValueError(f"{name} must be images [N, H, W, C] (NHWC), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (0..255), got dtype {images.dtype}")
    return images


def from_uint8(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    val_images: np.ndarray,
    val_labels: np.ndarray,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    num_classes: int = 10,
) -> Dataset:
    """A ``Dataset`` of uint8 images ``[N, H, W, C]`` kept as uint8 (a quarter of float32's memory on device), the
    host seeing (x / 255 − mean) / std per channel; labels ``[N]`` int in ``[0, num_classes)``."""
    train_images = _check_uint8("train_images", train_images)
    val_images = _check_uint8("val_images", val_images)
    if train_images.shape[1:] != val_images.shape[1:]:
        raise ValueError(
            f"train_images and val_images must share [H, W, C], got {train_images.shape[1:]} and {val_images.shape[1:]}"
        )
    c = train_images.shape[-1]
    mean = tuple(float(m) for m in np.ravel(mean))
    std = tuple(float(v) for v in np.ravel(std))
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean and std must have one entry per channel ({c}), got {len(mean)} and {len(std)}")
    if not all(np.isfinite(mean)) or not all(np.isfinite(v) and v > 0 for v in std):
        raise ValueError(f"mean must be finite and std finite and > 0, got mean {mean}, std {std}")
    train_labels = _check_labels("train_labels", train_labels, train_images.shape[0], num_classes)
    val_labels = _check_labels("val_labels", val_labels, val_images.shape[0], num_classes)
    return _dataset(train_images, train_labels, val_images, val_labels, num_classes, mean, std)


def load_cifar10(path) -> Dataset:
    """CIFAR-10 from local files: ``path`` is the ``cifar-10-batches-py`` folder, a folder holding it or the
    ``cifar-10-python.tar.gz`` archive (torchvision's root), or the archive itself. Nothing is downloaded; a
    missing or corrupt file raises ``CifarFilesError`` naming it and how to get the data."""
    from esper_jax.env.host import cifar_files

    arrays = cifar_files.read(path)
    return from_uint8(*arrays, mean=CIFAR10_MEAN, std=CIFAR10_STD, num_classes=10)


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
