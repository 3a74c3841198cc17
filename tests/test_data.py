import numpy as np
import pytest

import trainable.data as data_module
from tests.conftest import make_image_folder
from trainable.data import (
    DataConfig,
    DataError,
    channel_stats,
    load_dataset,
    pixel_moments,
    stratified_split,
)

CLASSES = ["ant", "bee", "cat"]


def spec(tmp_path, root, **kw) -> DataConfig:
    return DataConfig(dir=str(root), cache_dir=str(tmp_path / "cache"), **kw)


def test_image_folder_is_decoded_with_labels_from_sorted_folders(tmp_path):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=6, size=(8, 6))
    data = load_dataset(spec(tmp_path, root, val_size=3))
    assert data.source == "imagefolder"
    assert data.classes == CLASSES
    assert data.train_x.dtype == np.uint8 and data.train_x.shape == (15, 3, 6, 8)
    assert data.val_x.shape == (3, 3, 6, 8) and data.test_x.shape == (9, 3, 6, 8)
    assert data.train_y.dtype == np.int64
    # Class k was drawn as grey level 40·k plus noise below 20: labels must match pixels.
    for images, labels in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert np.array_equal(images.reshape(len(images), -1).min(1) // 40, labels)


def test_second_load_comes_from_the_cache(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=4)
    first = load_dataset(spec(tmp_path, root, val_size=3))

    def no_decode(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(data_module, "_decode_files", no_decode)
    second = load_dataset(spec(tmp_path, root, val_size=3))
    assert np.array_equal(first.train_x, second.train_x)
    assert first.fingerprint == second.fingerprint


def test_a_changed_file_invalidates_the_cache(tmp_path):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=4)
    first = load_dataset(spec(tmp_path, root, val_size=3))
    victim = sorted((root / "test" / "ant").iterdir())[0]
    make_image_folder(tmp_path / "other", CLASSES, per_class=4, size=(8, 8))
    victim.write_bytes(sorted((tmp_path / "other" / "test" / "cat").iterdir())[0].read_bytes())
    second = load_dataset(spec(tmp_path, root, val_size=3))
    assert first.fingerprint != second.fingerprint


def test_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 50, 50, 50, 50, 50])
    rest, held = stratified_split(labels, 150, seed=3)
    rest2, held2 = stratified_split(labels, 150, seed=3)
    _, held_other = stratified_split(labels, 150, seed=4)
    assert np.array_equal(held, held2) and np.array_equal(rest, rest2)
    assert not np.array_equal(held, held_other)
    assert len(held) == 150 and len(np.intersect1d(rest, held)) == 0
    assert len(rest) + len(held) == len(labels)
    counts = np.bincount(labels[held], minlength=10)
    assert list(counts) == [20] * 5 + [10] * 5  # exactly in proportion to the classes


def test_channel_stats_match_numpy():
    images = np.random.default_rng(0).integers(0, 256, (50, 3, 4, 5), dtype=np.uint8)
    mean, std = channel_stats(pixel_moments(images), 20)
    scaled = images / 255
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 2, 3)), rtol=1e-5)


def test_statistics_come_from_the_training_split_only(tmp_path):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=10)
    data = load_dataset(spec(tmp_path, root, val_size=6))
    mean, _ = channel_stats(pixel_moments(data.train_x), data.train_x[0, 0].size)
    np.testing.assert_allclose(data.mean, mean)


def test_subsets_are_stratified(tmp_path):
    spec = DataConfig(source="synthetic", val_size=100, train_subset=1000, test_subset=200)
    data = load_dataset(spec)
    assert len(data.train_y) + len(data.val_y) == 1000 and len(data.test_y) == 200
    assert set(np.bincount(data.val_y)) == {10}


def test_synthetic_data_is_deterministic():
    a = load_dataset(DataConfig(source="synthetic", val_size=100))
    b = load_dataset(DataConfig(source="synthetic", val_size=100))
    assert a.fingerprint == b.fingerprint and np.array_equal(a.val_x, b.val_x)


def test_val_size_must_leave_training_images(tmp_path):
    with pytest.raises(DataError, match="must be smaller than the training set"):
        load_dataset(DataConfig(source="synthetic", val_size=4000))


def test_mixed_image_sizes_are_refused(tmp_path):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=3, size=(8, 8))
    make_image_folder(tmp_path / "big", CLASSES, per_class=3, size=(9, 8))
    odd = sorted((tmp_path / "big" / "train" / "bee").iterdir())[0]
    (root / "train" / "bee" / "zz.png").write_bytes(odd.read_bytes())
    with pytest.raises(DataError, match="mixed sizes.*zz.png is 9×8"):
        load_dataset(spec(tmp_path, root, val_size=3))


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_a_corrupt_image_is_named(tmp_path, ext):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=3, ext=ext)
    bad = sorted((root / "train" / "cat").iterdir())[1]
    bad.write_bytes(bad.read_bytes()[:20])  # truncated
    with pytest.raises(DataError, match=f"cannot decode image .*{bad.name}"):
        load_dataset(spec(tmp_path, root, val_size=3))


def test_unrecognised_folder_says_what_to_place_where(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match="cifar-10-batches-py.*train/<class>"):
        load_dataset(spec(tmp_path, tmp_path / "stuff"))


def test_classes_must_match_between_train_and_test(tmp_path):
    root = make_image_folder(tmp_path / "imgs", CLASSES, per_class=2)
    (root / "test" / "cat").rename(root / "test" / "cow")
    with pytest.raises(DataError, match="class folders differ"):
        load_dataset(spec(tmp_path, root))


def offline(*args, **kwargs):
    raise OSError("network unreachable")


def test_missing_dir_offline_says_what_to_place_where(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_url", offline)
    target = tmp_path / "nothing"
    with pytest.raises(DataError, match="holds no CIFAR-10.*cifar-10-python.tar.gz"):
        load_dataset(spec(tmp_path, target))
    assert not target.exists()  # a failed download leaves nothing behind


def test_corrupt_cifar_batch_is_reported_as_corrupt(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    monkeypatch.setattr(tv_utils, "download_url", offline)
    batches = tmp_path / "cifar" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    (batches / "data_batch_1").write_bytes(b"truncated")
    with pytest.raises(DataError, match="fail torchvision's checksum"):
        load_dataset(spec(tmp_path, tmp_path / "cifar"))


def test_a_file_as_data_dir_is_refused(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        load_dataset(spec(tmp_path, tmp_path / "file.txt"))
