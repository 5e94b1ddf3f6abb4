"""CIFAR-10 from the official pickle files (a tiny fake ``cifar-10-batches-py``), uint8 data normalised in the
step, augmentation, the per-env validation window, the presets and the data passed to compiled code."""

from __future__ import annotations

import pickle
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from esper_jax.config import ConfigError
from esper_jax.config.presets import preset
from esper_jax.env import EnvConfig, HostConfig, make
from esper_jax.env.host import CifarFilesError, augment, cifar_files, data, load_cifar10

PER_FILE = 8  # images per fake batch file: 40 train, 8 test


def _write_batch(path, images_nhwc: np.ndarray, labels: np.ndarray) -> None:
    flat = images_nhwc.transpose(0, 3, 1, 2).reshape(len(images_nhwc), 3072)  # the official channel-major rows
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"fake", b"labels": [int(v) for v in labels], b"data": flat,
                     b"filenames": [b"x.png"] * len(labels)}, f)


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    """(root folder holding cifar-10-batches-py, the .tar.gz, train images, train labels, test images, labels)."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / cifar_files.FOLDER
    folder.mkdir()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6 * PER_FILE, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 6 * PER_FILE)
    for i, name in enumerate((*cifar_files.TRAIN_FILES, cifar_files.TEST_FILE)):
        _write_batch(folder / name, x[i * PER_FILE:(i + 1) * PER_FILE], y[i * PER_FILE:(i + 1) * PER_FILE])
    with open(folder / cifar_files.META_FILE, "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)], b"num_cases_per_batch": PER_FILE}, f)
    archive = root / "archive" / cifar_files.ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=cifar_files.FOLDER)
    split = 5 * PER_FILE
    return root, archive, x[:split], y[:split], x[split:], y[split:]


def test_reads_the_official_layout_from_the_folder_its_parent_and_the_archive(fake):
    root, archive, x_train, y_train, x_test, y_test = fake
    for path in (root / cifar_files.FOLDER, root, archive, archive.parent):
        ds = load_cifar10(str(path))
        assert ds.train_images.dtype == np.uint8 and ds.train_images.shape == (40, 32, 32, 3)
        np.testing.assert_array_equal(ds.train_images, x_train)  # NHWC, pixel for pixel
        np.testing.assert_array_equal(ds.train_labels, y_train)
        np.testing.assert_array_equal(ds.val_images, x_test)
        np.testing.assert_array_equal(ds.val_labels, y_test)
        assert (ds.mean, ds.std) == (data.CIFAR10_MEAN, data.CIFAR10_STD)


def test_missing_and_corrupt_files_name_the_file_and_how_to_get_the_data(fake, tmp_path):
    root = fake[0]
    with pytest.raises(CifarFilesError, match=r"does not exist.*cifar-10-python.tar.gz"):
        load_cifar10(str(tmp_path / "nowhere"))
    with pytest.raises(CifarFilesError, match="no CIFAR-10 files"):
        load_cifar10(str(tmp_path))
    broken = tmp_path / cifar_files.FOLDER
    broken.mkdir()
    for name in (*cifar_files.TRAIN_FILES, cifar_files.TEST_FILE, cifar_files.META_FILE):
        (broken / name).write_bytes((root / cifar_files.FOLDER / name).read_bytes())
    (broken / "data_batch_3").unlink()
    with pytest.raises(CifarFilesError, match=r"missing CIFAR-10 file .*data_batch_3.*https://www.cs.toronto.edu"):
        load_cifar10(str(broken))
    (broken / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(CifarFilesError, match=r"data_batch_3 is corrupt"):
        load_cifar10(str(broken))
    _write_batch(broken / "data_batch_3", np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 2, 12]))
    with pytest.raises(CifarFilesError, match=r"data_batch_3 is corrupt: b'labels'"):
        load_cifar10(str(broken))
    with open(broken / "data_batch_3", "wb") as f:  # a pickle that would run code is refused, not executed
        pickle.dump({b"data": np.zeros(3), b"labels": print}, f)
    with pytest.raises(CifarFilesError, match=r"data_batch_3 is corrupt.*refusing to load builtins.print"):
        load_cifar10(str(broken))
    bad_archive = tmp_path / "bad" / cifar_files.ARCHIVE
    bad_archive.parent.mkdir()
    bad_archive.write_bytes(b"truncated")
    with pytest.raises(CifarFilesError, match=r"not a readable .tar.gz"):
        load_cifar10(str(bad_archive))


def test_uint8_images_are_normalised_in_the_step_with_upstreams_constants(fake):
    ds = load_cifar10(str(fake[0]))
    got = np.asarray(ds.normalise(jnp.asarray(ds.train_images[:2])))
    want = (ds.train_images[:2] / 255.0 - np.array(data.CIFAR10_MEAN)) / np.array(data.CIFAR10_STD)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="must be uint8"):
        data.from_uint8(ds.train_images.astype(np.float32), ds.train_labels, ds.val_images, ds.val_labels,
                        mean=data.CIFAR10_MEAN, std=data.CIFAR10_STD)
    with pytest.raises(ValueError, match="one entry per channel"):
        data.from_uint8(ds.train_images, ds.train_labels, ds.val_images, ds.val_labels, mean=(0.5,), std=(0.2,))


def test_augmentation_is_a_padded_crop_and_flip_per_image():
    images = jnp.asarray(np.random.default_rng(1).integers(1, 256, (64, 32, 32, 3), dtype=np.uint8))
    out = np.asarray(augment.augment(images, jax.random.PRNGKey(0)))
    assert out.shape == images.shape and out.dtype == np.uint8
    padded = np.pad(np.asarray(images), ((0, 0), (4, 4), (4, 4), (0, 0)))
    flips = 0
    for i in range(len(out)):  # every output is some 32×32 window of the zero-padded image, maybe mirrored
        hits = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                if np.array_equal(out[i], (lambda w: w[:, ::-1] if f else w)(padded[i, dy:dy + 32, dx:dx + 32]))]
        assert hits, i
        flips += hits[0][2]
    assert 10 < flips < 54  # about half mirrored
    assert not np.array_equal(out, np.asarray(augment.augment(images, jax.random.PRNGKey(1))))  # keyed


def _cifar_config(**host) -> EnvConfig:
    return EnvConfig.create(1, task="cifar10", episode_length=3, host=HostConfig(batch_size=8, **host))


def test_cifar10_host_env_runs_on_the_files_with_a_fixed_validation_window(fake):
    cfg = _cifar_config(data_dir=str(fake[0]), val_subset=5, augment=True)
    env = make("host", cfg)
    assert env.oracle.data == load_cifar10(str(fake[0]))
    state, obs = jax.jit(env.reset)(jax.random.PRNGKey(0))
    start = int(state.oracle.val_start)
    assert 0 <= start < 8
    acc = float(obs.signals.val_accuracy)
    assert acc * 5 / 100 == pytest.approx(round(acc * 5 / 100))  # a percentage of 5 images
    with pytest.raises(ValueError, match=r"env.host.data-dir.*cifar-10-python.tar.gz"):
        make("host", _cifar_config())
    with pytest.raises(ValueError, match="val_subset"):
        make("host", _cifar_config(data_dir=str(fake[0]), val_subset=9))


def test_bound_data_are_arguments_not_constants(fake):
    env = make("host", _cifar_config(data_dir=str(fake[0]), val_subset=4, augment=True))
    key = jax.random.PRNGKey(3)
    bound = jax.jit(lambda d, k: env.bind(d).reset(k)).lower(env.data(), key).as_text()
    constants = jax.jit(env.reset).lower(key).as_text()
    assert len(bound) < len(constants) - 100_000  # 48 images × 3,072 bytes, printed as constants


@pytest.mark.slow  # two compiles of the host env's reset
def test_bound_data_give_the_same_reset_as_constants(fake):
    env = make("host", _cifar_config(data_dir=str(fake[0]), val_subset=4, augment=True))
    key = jax.random.PRNGKey(3)
    bound = jax.jit(lambda d, k: env.bind(d).reset(k))(env.data(), key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), jax.jit(env.reset)(key), bound)


def test_presets_cifar10_is_cifar10_and_digits_is_digits():
    c = preset("cifar10")
    assert (c.env_kind, c.env.task, c.env.host_batch_size) == ("host", "cifar10", 512)
    assert (c.env.host.minibatches_per_step, c.env.host.val_subset, c.env.host.augment) == (24, 2048, True)
    d = preset("digits")
    assert (d.env_kind, d.env.task, d.env.host_batch_size, d.env.host.augment) == ("host", "digits", 16, False)
    assert d.ppo == c.ppo
    assert preset("default").env_kind == "sim"


def test_cifar10_preset_without_data_dir_is_a_clear_config_error(tmp_path, capsys):
    from esper_jax import trainer

    with pytest.raises(ConfigError, match="data-dir"):
        trainer.build_static(preset("cifar10"))
    with pytest.raises(ConfigError, match="does not exist"):
        from dataclasses import replace

        c = preset("cifar10")
        trainer.build_static(replace(c, env=replace(c.env, host=replace(c.env.host, data_dir=str(tmp_path / "x")))))


def test_cli_takes_the_data_dir_and_the_augmentation_switch(tmp_path):
    from esper_jax.train import parse_args

    args = parse_args(["cifar10", "--env.host.data-dir", str(tmp_path), "--env.host.no-augment"])
    host = args.config.env.host
    assert (args.preset, host.data_dir, host.augment, host.val_subset) == ("cifar10", str(tmp_path), False, 2048)
    assert parse_args(["digits"]).config.env.task == "digits"
