"""Batched augmentation: shapes and labels kept, pixels only moved, reproducible under a seed."""

import pytest
import torch

from tests.conftest import continued_epoch
from trainable.augment import crop_flip, cutout, mix, translate
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


@pytest.mark.parametrize("down, right", [(1, 1), (-1, -1), (2, -1), (0, 0)])
def test_translate_is_a_crop_of_the_reflect_padded_image(down, right):
    images = _images(n=3)
    pad = 2
    padded = torch.nn.functional.pad(images.float(), (pad,) * 4, mode="reflect")
    top, left = pad - down, pad - right
    expected = padded[:, :, top : top + 8, left : left + 8]
    assert torch.equal(translate(images, down, right).float(), expected)


def test_mixup_blends_each_image_with_its_partner_and_weighs_their_labels():
    images, labels = torch.randn(32, 3, 8, 8), torch.arange(32)
    mixed, how = mix(images.clone(), labels, mixup=0.4, cutmix=0, generator=_gen())
    partners = how.partner  # labels are the indices: the partner's label is its image's index
    assert sorted(partners.tolist()) == list(range(32)) and 0 < how.weight < 1
    expected = how.weight * images + (1 - how.weight) * images[partners]
    torch.testing.assert_close(mixed, expected)


def test_cutmix_pastes_one_box_and_weighs_the_labels_by_its_area():
    images, labels = torch.randn(32, 3, 8, 8), torch.arange(32)
    torch.manual_seed(3)
    mixed, how = mix(images.clone(), labels, mixup=0, cutmix=1.0, generator=_gen())
    moved = how.partner != labels  # an image may draw itself as its partner
    from_partner = (mixed == images[how.partner]) & (mixed != images)
    box = from_partner[moved].all(0).all(0)  # one box, the same for every image and channel
    assert box.any() and torch.equal(from_partner[moved], box.expand_as(mixed[moved]))
    assert torch.equal(mixed[:, :, ~box], images[:, :, ~box])
    assert how.weight == pytest.approx(1 - box.sum().item() / 64)


def test_no_mixing_leaves_the_batch_and_both_on_use_both():
    images = torch.randn(16, 3, 8, 8)
    same, how = mix(images, torch.arange(16), mixup=0, cutmix=0, generator=_gen())
    assert same is images and how is None
    kinds = set()
    torch.manual_seed(0)
    for _ in range(20):
        mixed, _ = mix(images.clone(), torch.arange(16), 1.0, 1.0, _gen())
        # CutMix leaves some pixels of every image as they were; MixUp changes them all.
        kinds.add("cutmix" if (mixed == images).any() else "mixup")
    assert kinds == {"mixup", "cutmix"}


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


@pytest.mark.parametrize("mixing", [{}, {"mixup": 0.4}, {"cutmix": 1.0}])
def test_an_augmented_run_restores_exactly_and_mixing_changes_it(data, mixing):
    # An MLP: quick, and the augmentation streams are what must be restored.
    plain = AUGMENTED.model_copy(update={"model": "mlp", "hidden": 16})
    config = plain.model_copy(update=mixing)
    first = Training(config, data, torch.device("cpu"))
    first.train_epoch()
    expected, got = continued_epoch(first, data)
    assert got["train_loss"] == expected["train_loss"]
    if mixing:
        unmixed = Training(plain, data, torch.device("cpu"))
        unmixed.train_epoch()
        assert unmixed.train_epoch()["train_loss"] != expected["train_loss"]
