"""Every model's forward and backward shapes, and the choices that depend on the device."""

import pytest
import torch
from torch import nn

from trainable.families import FAMILIES, build_model, readers
from trainable.loop import cpu_multiplies_bf16, fast_paths
from trainable.mlp import InputMajorLinear
from trainable.resmlp import Block
from trainable.settings import TrialConfig


def _config(**fields) -> TrialConfig:
    return TrialConfig(**fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "mlp"},
        {"model": "mlp", "hidden": 64, "depth": 3, "dropout": 0.2},
        {"model": "cnn", "width": 8},
        {"model": "cnn", "width": 16},
        {"model": "resmlp", "hidden": 32, "depth": 2, "expansion": 2, "dropout": 0.1},
    ],
)
@pytest.mark.parametrize("shape", [(3, 32, 32), (3, 8, 8)])
def test_forward_and_backward_shapes(fields, shape):
    model = build_model(_config(**fields), shape, 10)
    x = torch.randn(4, *shape, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 10)
    out.square().sum().backward()
    assert x.grad.shape == x.shape
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.shape == param.shape, name


def test_mlp_depth_and_dropout_build_the_layers_asked_for():
    model = build_model(_config(hidden=64, depth=3, dropout=0.25), (3, 32, 32), 10)
    linears = [m for m in model if isinstance(m, InputMajorLinear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (3072, 64),
        (64, 64),
        (64, 64),
        (64, 10),
    ]
    dropouts = [m.p for m in model if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.25] * 3
    model.eval()  # dropout off: the same input gives the same output
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), model(x))


def test_cnn_width_scales_its_channels():
    narrow = build_model(_config(model="cnn", width=8), (3, 32, 32), 10)
    wide = build_model(_config(model="cnn", width=16), (3, 32, 32), 10)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert narrow[0].out_channels == 8 and wide[0].out_channels == 16
    assert 3.5 < count(wide) / count(narrow) < 4.1  # conv weights grow with width²
    assert narrow[-1].in_features == 32  # the last stage has 4× the stem's channels


@pytest.mark.parametrize("amx", [False, True])
def test_fast_paths_chosen_by_device_and_model(monkeypatch, amx):
    # Pure functions of the device and the CPU's flags, so checked here for every machine.
    monkeypatch.setattr("trainable.loop.cpu_multiplies_bf16", lambda: amx)
    convolutional = FAMILIES["cnn"].convolutional
    cuda_cnn = fast_paths(torch.device("cuda").type, convolutional)
    assert cuda_cnn.channels_last and cuda_cnn.autocast is torch.bfloat16
    cpu_cnn = fast_paths("cpu", convolutional)
    assert cpu_cnn.channels_last and cpu_cnn.autocast is (torch.bfloat16 if amx else None)
    for device in ("cpu", "cuda"):
        mlp = fast_paths(device, FAMILIES["mlp"].convolutional)
        assert not mlp.channels_last and mlp.autocast is None


def test_bf16_units_read_from_the_cpu_flags(tmp_path):
    amx, avx2 = tmp_path / "amx", tmp_path / "avx2"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n")
    avx2.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\nmodel name\t: amx_bf16\n")
    assert cpu_multiplies_bf16(str(amx))
    assert not cpu_multiplies_bf16(str(avx2))
    assert not cpu_multiplies_bf16(str(tmp_path / "absent"))  # not Linux: no flags to read


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cnn_trains_on_the_gpu_in_bf16_channels_last_and_restores():
    import io

    from trainable.checkpoint import restore_training, training_state
    from trainable.data import DataConfig, load_dataset
    from trainable.loop import Training

    data = load_dataset(DataConfig(source="synthetic", val_size=200, train_subset=600))
    config = _config(model="cnn", width=8, epochs=2, batch_size=100, augment="crop_flip")
    cuda = torch.device("cuda")
    first = Training(config, data, cuda)
    assert first.data.train[0].is_cuda  # data and augmentation live on the GPU
    assert first.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    first.train_epoch()
    saved = io.BytesIO()
    torch.save(training_state(first), saved)
    expected = first.train_epoch()
    second = Training(config, data, cuda)
    saved.seek(0)
    restore_training(second, torch.load(saved, map_location=cuda, weights_only=True))
    got = second.train_epoch()
    assert torch.isfinite(torch.tensor(got["train_loss"]))
    assert got["train_loss"] == pytest.approx(expected["train_loss"], rel=1e-3)


def test_resmlp_is_an_embedding_residual_blocks_a_norm_and_a_head():
    config = _config(model="resmlp", hidden=16, depth=3, expansion=4)
    model = build_model(config, (3, 8, 8), 10)
    layers = (nn.Linear, InputMajorLinear)
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, layers)]
    assert linears == [(192, 16), *[(16, 64), (64, 16)] * 3, (16, 10)]
    blocks = [m for m in model if isinstance(m, Block)]
    assert len(blocks) == 3
    assert all(isinstance(b.branch[0], nn.LayerNorm) for b in blocks)  # pre-norm
    # A block whose branch gives 0 passes the stream through: a residual, not a stack.
    x = torch.randn(5, 16)
    with torch.no_grad():
        blocks[0].branch[-1].weight.zero_()
        blocks[0].branch[-1].bias.zero_()
    assert torch.equal(blocks[0](x), x)
    dropped = build_model(_config(model="resmlp", hidden=16, depth=2, dropout=0.3), (3, 8, 8), 10)
    assert [m.p for m in dropped.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3]


def test_family_settings_are_read_by_the_families_that_name_them():
    assert readers("hidden") == {"mlp", "resmlp"}
    assert readers("expansion") == {"resmlp"}
    assert readers("width") == {"cnn", "airbench"}
