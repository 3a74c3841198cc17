"""Batched augmentation: shapes and labels kept, pixels only moved, reproducible under a seed."""

import pytest
import torch

from trainable.augment import crop_flip, cutout
from trainable.checkpoint import restore_training, training_state
from trainable.data import DataConfig, load_dataset
from trainable.loop import Training
from trainable.settings import TrialConfig


def _images(n=64, size=8):
    # Every pixel distinct within an image: where each one went can be traced.
    base = torch.arange(3 * size * size).view(1, 3, size, size)
    return (base + torch.arange(n).view(n, 1, 1, 1)).to(torch.int64)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["none", "flip", "crop_flip"])
def test_shapes_and_dtype_are_kept(kind):
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    out = crop_flip(images, kind, _gen())
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert cutout(out.float(), 8, _gen()).shape == images.shape


def test_flip_mirrors_about_half_the_images_and_nothing_else():
    images = _images(n=200)
    out = crop_flip(images, "flip", _gen())
    flipped = (out == images.flip(3)).flatten(1).all(1)
    same = (out == images).flatten(1).all(1)
    assert bool((flipped ^ same).all())  # each image either untouched or mirrored
    assert 60 < int(flipped.sum()) < 140


@pytest.mark.parametrize("padding", [2, 4])
def test_crop_shifts_by_at_most_the_padding_with_reflected_borders(padding):
    size, images = 8, _images(n=200)
    out = crop_flip(images, "crop_flip", _gen(), padding)
    shifts = []
    for n in range(len(images)):
        image = out[n]
        if image[0, 0, 0] > image[0, 0, -1]:  # mirrored (rows count up left to right)
            image = image.flip(2)
        # The pixel at the centre came from within `padding` pixels of it.
        source = int(image[0, size // 2, size // 2]) - n
        row, col = divmod(source, size)
        shifts.append(max(abs(row - size // 2), abs(col - size // 2)))
        # Inside the image each row/column is a shifted copy of the original's.
        assert set(image.flatten().tolist()) <= set(images[n].flatten().tolist())
    assert max(shifts) == padding  # every shift up to the padding occurs, none beyond
    shifted = sum(
        not torch.equal(crop_flip(images[i : i + 1], "crop_flip", _gen(i)), images[i : i + 1])
        for i in range(20)
    )
    assert shifted > 10


def test_cutout_zeroes_one_square_at_most():
    images = torch.ones(100, 3, 16, 16)
    out = cutout(images, 6, _gen())
    zeros = (out == 0).all(1).flatten(1).sum(1)  # zeroed pixels per image, all channels alike
    assert int(zeros.max()) == 36 and int(zeros.min()) > 0  # a full square, or a part at an edge
    assert ((out == 0) | (out == 1)).all()


@pytest.mark.parametrize("kind", ["flip", "crop_flip"])
def test_same_seed_same_augmentation_other_seed_other(kind):
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    first, again = crop_flip(images, kind, _gen(3)), crop_flip(images, kind, _gen(3))
    other = crop_flip(images, kind, _gen(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_images_smaller_than_the_padding_still_crop():
    images = torch.randint(0, 256, (16, 3, 3, 3), dtype=torch.uint8)
    out = crop_flip(images, "crop_flip", _gen())
    assert out.shape == images.shape
    for before, after in zip(images, out, strict=True):
        assert set(after.flatten().tolist()) <= set(before.flatten().tolist())


def test_unknown_kind_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="augment"):
        TrialConfig(augment="rotate")


@pytest.fixture(scope="module")
def data():
    return load_dataset(DataConfig(source="synthetic", val_size=200, train_subset=600))


AUGMENTED = TrialConfig(
    model="cnn",
    width=4,
    epochs=2,
    batch_size=100,
    augment="crop_flip",
    cutout=4,
    label_smoothing=0.1,
    schedule="onecycle",
    warmup=0.5,
)


def test_training_batches_keep_labels_and_evaluation_never_augments(data):
    training = Training(AUGMENTED, data, torch.device("cpu"))
    batch = torch.arange(50)
    x, y = training.data.training_batch(batch)
    assert torch.equal(y, training.data.train[1][batch]) and x.shape == (50, 3, 32, 32)
    assert not torch.equal(x, training.data.normalise(training.data.train[0][batch]))
    # evaluate() reads the stored images unaugmented: the same numbers twice.
    assert training.evaluate("val") == training.evaluate("val")


def test_augmented_run_restores_exactly(data):
    import io

    # An MLP: quick, and the augmentation stream is what must be restored.
    config = AUGMENTED.model_copy(update={"model": "mlp", "hidden": 16})
    first = Training(config, data, torch.device("cpu"))
    first.train_epoch()
    saved = io.BytesIO()
    torch.save(training_state(first), saved)
    expected = first.train_epoch()
    second = Training(config.model_copy(update={"seed": 7}), data, torch.device("cpu"))
    saved.seek(0)
    restore_training(second, torch.load(saved, weights_only=True))
    assert second.train_epoch()["train_loss"] == expected["train_loss"]
