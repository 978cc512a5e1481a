"""The cnn builder and ConvEncoder: the tutorial network exactly, ResNet blocks, the errors
that name a block, channels_last, ONNX parity, and a few steps of learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlpipe._signature import check_kwargs
from dlpipe.errors import ConfigError
from dlpipe.models import MODELS, SUPPLIED
from dlpipe.models.cnn import ConvEncoder, cnn, parse_blocks


def tutorial_by_hand() -> nn.Sequential:
    """Keras' MNIST convnet: Conv(32,3)-MaxPool-Conv(64,3)-MaxPool-Flatten-Dense(64)-
    Dropout(0.5)-Dense(10), written out for 28x28x1 inputs."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 5 * 5, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10),
    )


def test_cnn_is_registered_and_its_shape_argument_is_the_image_shape():
    assert MODELS.get("cnn") is cnn
    assert check_kwargs(cnn, {"in_shape": [1, 2, 3]}, "model", skip=SUPPLIED) == [
        ("model.in_shape", "set by dlpipe, not by the config; remove it")]


def test_the_default_cnn_is_the_tutorial_network_parameter_for_parameter():
    torch.manual_seed(0)
    model, by_hand = cnn((1, 28, 28), 10).eval(), tutorial_by_hand().eval()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [tuple(p.shape) for p in by_hand.parameters()]
    # conv 320 + conv 18,496 + dense 102,464 + dense 650
    assert sum(p.numel() for p in model.parameters()) == 320 + 18_496 + 102_464 + 650 == 121_930
    with torch.no_grad():  # the same weights give the same outputs: same layers, same order
        for mine, theirs in zip(model.parameters(), by_hand.parameters(), strict=True):
            mine.copy_(theirs)
    x = torch.randn(5, 784)
    torch.testing.assert_close(model(x), by_hand(x), rtol=0, atol=0)


def test_the_tutorial_network_is_also_expressible_spelled_out():
    spelled = cnn((1, 28, 28), 10, blocks=[{"channels": 32, "kernel": 3, "pool": "max"},
                                           {"channels": 64, "kernel": 3, "pool": "max"}],
                  pool="flatten", hidden=[64], dropout=0.5)
    assert str(spelled) == str(cnn((1, 28, 28), 10))


@pytest.mark.parametrize(("in_shape", "pool", "width"), [
    ((1, 28, 28), "flatten", 16 * 13 * 13), ((3, 17, 9), "avg", 16), ((2, 5, 5), "flatten", 16)])
def test_outputs_and_encoder_widths_follow_the_blocks(in_shape, pool, width):
    blocks = [{"channels": 8, "padding": "same", "batch_norm": True},
              {"channels": 16, "kernel": 3, "pool": "avg", "dropout": 0.1}]
    if in_shape[1] == 5:
        blocks[1] = {"channels": 16, "kernel": 5, "padding": 2, "stride": 5}  # 5x5 → 1x1
    model = cnn(in_shape, 3, blocks=blocks, pool=pool, hidden=[12, 7]).train()
    c, h, w = in_shape
    out = model(torch.randn(6, c * h * w))
    assert out.shape == (6, 3) and torch.isfinite(out).all()
    assert model.encoder.out_features == width
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_the_encoder_takes_flat_or_image_shaped_batches_alike():
    encoder = ConvEncoder((3, 6, 6), [{"channels": 4}], pool="flatten").eval()
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(encoder(x.flatten(1)), encoder(x), rtol=0, atol=0)
    assert encoder.out_shape == (4, 4, 4) and encoder(x).shape == (2, 64)


def test_a_plain_block_orders_conv_norm_activation_pool_dropout():
    encoder = ConvEncoder((1, 8, 8), [{"channels": 4, "batch_norm": True, "activation": "gelu",
                                       "pool": "max", "dropout": 0.2}])
    kinds = [type(m).__name__ for m in encoder.blocks.block0]
    assert kinds == ["Conv2d", "BatchNorm2d", "GELU", "MaxPool2d", "Dropout"]
    assert encoder.blocks.block0[0].bias is None  # the norm's shift makes a bias redundant


def test_residual_blocks_project_where_the_shape_changes_and_add_the_skip():
    torch.manual_seed(0)
    model = cnn((3, 15, 15), 4, pool="avg", hidden=[], residual=True,
                blocks=[{"channels": 8}, {"channels": 8}, {"channels": 16, "stride": 2}])
    encoder = model.encoder
    assert encoder.out_shape == (16, 8, 8)  # stride 2 on 15 pixels with 'same' padding: ceil
    first, second, third = (encoder.blocks[i][0] for i in range(3))
    assert isinstance(second.skip, nn.Identity)  # 8 → 8 channels, stride 1
    projection = third.skip[0]
    assert projection.kernel_size == (1, 1) and projection.stride == (2, 2)
    assert isinstance(first.skip[0], nn.Conv2d)  # 3 → 8 channels
    # The block computes relu(bn(conv(relu(bn(conv(x))))) + skip(x)) - checked by hand.
    block = third.eval()
    x = torch.randn(2, 8, 15, 15)
    conv1, bn1 = block.conv1
    conv2, bn2 = block.conv2
    main = bn2(F.conv2d(F.relu(bn1(F.conv2d(x, conv1.weight, stride=2, padding=1))),
                        conv2.weight, padding=1))
    skip = block.skip[1](F.conv2d(x, projection.weight, stride=2))
    torch.testing.assert_close(block(x), F.relu(main + skip), rtol=1e-6, atol=1e-6)
    assert model(torch.randn(2, 3 * 15 * 15)).shape == (2, 4)


def test_same_padding_keeps_the_size_at_stride_1():
    encoder = ConvEncoder((2, 7, 9), [{"channels": 3, "kernel": 5, "padding": "same"}])
    assert encoder.out_shape == (3, 7, 9)


# -- errors ---------------------------------------------------------------------------------------


def test_a_stack_that_shrinks_the_image_below_1x1_names_the_block():
    blocks = [{"channels": 8, "pool": "max"}, {"channels": 8, "pool": "max"},
              {"channels": 8}]
    with pytest.raises(ConfigError, match=r"^model\.blocks\[1\]: the image shrinks below 1x1 at "
                                          r"this block's 2x2 max pooling: 1x1 pixels in, 0x0 out"):
        cnn((1, 8, 8), 2, blocks=blocks)  # 8 → conv 6 → pool 3 → conv 1 → pool 0
    with pytest.raises(ConfigError, match=r"model\.blocks\[0\]: the image shrinks below 1x1 at "
                                          r"this block's 5x5 convolution \(stride 1, padding 0\): "
                                          r"4x4 pixels in, 0x0 out"):
        cnn((1, 4, 4), 2, blocks=[{"channels": 8, "kernel": 5}])


def test_every_bad_block_key_is_reported_at_once_with_its_address():
    blocks = [{"chanels": 8}, {"channels": 0, "pool": "maxx", "padding": "valid"},
              {"channels": 4, "padding": -1, "dropout": 1.0}, "conv"]
    with pytest.raises(ConfigError) as info:
        parse_blocks(blocks)
    assert dict(info.value.problems) == {
        "model.blocks[0].chanels": "unknown key 'chanels'. Did you mean 'channels'? Known: "
                                   "activation, batch_norm, channels, dropout, kernel, padding, "
                                   "pool, pool_size, residual, stride",
        "model.blocks[0].channels": "required key is missing",
        "model.blocks[1].channels": "Input should be greater than or equal to 1; got 0",
        "model.blocks[1].pool": "unknown value 'maxx'. Did you mean 'max'? Known: avg, max",
        "model.blocks[1].padding": "unknown value 'valid'. Known: same",
        "model.blocks[2].padding": "Input should be greater than or equal to 0; got -1",
        "model.blocks[2].dropout": "Input should be less than 1; got 1.0",
        "model.blocks[3]": "expected a mapping such as {channels: 32}; got 'conv'",
    }


def test_odd_kernels_only_for_same_padding_and_no_explicit_padding_on_residual_blocks():
    with pytest.raises(ConfigError, match=r"model\.blocks\[0\]: 'same' padding needs an odd "
                                          r"kernel; got kernel 4"):
        cnn((1, 8, 8), 2, blocks=[{"channels": 4, "kernel": 4, "padding": "same"}])
    with pytest.raises(ConfigError, match=r"model\.blocks\[0\]: residual blocks pad to keep the "
                                          r"size \('same'\); remove padding: 1"):
        cnn((1, 8, 8), 2, blocks=[{"channels": 4, "residual": True, "padding": 1}])


def test_no_blocks_and_a_bad_head_are_config_errors():
    with pytest.raises(ConfigError, match=r"model\.blocks: needs at least one block"):
        cnn((1, 8, 8), 2, blocks=[])
    assert check_kwargs(cnn, {"pool": "max", "hidden": "64"}, "model") == [
        ("model.pool", "unknown value 'max'. Known: avg, flatten"),
        ("model.hidden", "expected a list of integers; got '64'"),
    ]


def test_an_encoder_inside_another_model_names_its_own_config_path():
    with pytest.raises(ConfigError, match=r"model\.encoders\.photo\.blocks\[0\]\.kernel"):
        ConvEncoder((1, 8, 8), [{"channels": 4, "kernel": 0}], path="model.encoders.photo")
    with pytest.raises(ConfigError, match=r"model\.encoders\.photo\.activation: unknown value "
                                          r"'rleu'\. Did you mean 'relu'\?"):
        ConvEncoder((1, 8, 8), activation="rleu", path="model.encoders.photo")


# -- memory format, export, training --------------------------------------------------------------


def test_in_channels_last_the_images_run_as_nhwc_with_the_same_outputs():
    torch.manual_seed(0)
    model = cnn((3, 8, 8), 2, blocks=[{"channels": 4, "batch_norm": True},
                                      {"channels": 4, "residual": True}]).eval()
    x = torch.randn(4, 192)
    expected = model(x)
    seen = []
    model.encoder.blocks.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    model.to(memory_format=torch.channels_last)
    # Same math in another memory order; only the summation order of the kernels differs.
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    assert seen == [True]


def mixed_cnn() -> tuple[tuple[int, int, int], nn.Module]:
    """Every layer kind at once: a plain block with batch norm, max pooling and dropout, a
    residual stride-2 block with a projection, flatten, a hidden layer with dropout."""
    torch.manual_seed(0)
    in_shape = (3, 12, 12)
    model = cnn(in_shape, 3, hidden=[16], blocks=[
        {"channels": 8, "batch_norm": True, "pool": "max", "dropout": 0.1},
        {"channels": 16, "stride": 2, "residual": True}])
    model.train()(torch.randn(32, 3 * 12 * 12) * 2 + 1)  # non-trivial batch-norm statistics
    return in_shape, model


@pytest.mark.parametrize("kind", [
    "mixed", pytest.param("tutorial", marks=pytest.mark.slow),
    pytest.param("avg", marks=pytest.mark.slow)])
def test_the_cnn_exports_to_onnx_with_pytorch_outputs_at_two_batch_sizes(kind, tmp_path):
    # The first export in a process also pays for importing the exporter (several seconds on
    # a loaded machine); the two slow cases add little coverage to the mixed one.
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from dlpipe.export.onnx import export_onnx

    torch.manual_seed(0)
    if kind == "mixed":
        in_shape, model = mixed_cnn()
    elif kind == "tutorial":
        in_shape, model = (1, 28, 28), cnn((1, 28, 28), 10)
    else:
        in_shape, model = (2, 9, 9), cnn((2, 9, 9), 2, pool="avg", residual=True,
                                         blocks=[{"channels": 4}, {"channels": 8, "stride": 2}])
    model.eval()
    width = in_shape[0] * in_shape[1] * in_shape[2]
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, width, generator=gen) for n in (1, 37)]
    # export_onnx runs the parity gate (onnx.RTOL/ATOL: fp32 in both runtimes) on both batches
    # and raises ExportError naming the first divergent layer otherwise.
    path = export_onnx(model, torch.randn(2, width, generator=gen), tmp_path / "cnn.onnx",
                       check=batches)
    assert path.exists()


def left_or_right(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 noise with a bright 3x3 blob in the left or the right half; the class is the side."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=gen) * 0.3
    y = torch.randint(0, 2, (n,), generator=gen)
    top = torch.randint(0, 6, (n,), generator=gen)
    left = torch.randint(0, 2, (n,), generator=gen) + 5 * y  # columns 0-3 or 5-7
    for i in range(n):
        x[i, 0, top[i]:top[i] + 3, left[i]:left[i] + 3] += 2.0
    return x.flatten(1), y


def test_a_few_steps_on_a_tiny_image_problem_drive_the_loss_down():
    torch.manual_seed(0)
    x, y = left_or_right(128)
    model = cnn((1, 8, 8), 2, blocks=[{"channels": 8, "padding": "same", "pool": "max"}],
                hidden=[16], dropout=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(16):
        idx = torch.arange(step * 32, step * 32 + 32) % 128
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.6  # chance level is log 2 = 0.69
    assert max(losses[-4:]) < 0.1
    x_test, y_test = left_or_right(256, seed=1)
    accuracy = (model.eval()(x_test).argmax(1) == y_test).float().mean()
    assert accuracy > 0.9


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_cuda_in_channels_last_the_cnn_matches_the_cpu_model(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare fp32 with fp32
    torch.manual_seed(0)
    model = cnn((3, 16, 16), 5, pool="avg", residual=True,
                blocks=[{"channels": 16}, {"channels": 32, "stride": 2, "pool": "max"}]).eval()
    x = torch.randn(8, 3 * 16 * 16)
    expected = model(x)
    gpu = model.to("cuda", memory_format=torch.channels_last)
    assert gpu.encoder.blocks.block0[0].conv1[0].weight.is_contiguous(
        memory_format=torch.channels_last)
    # cuDNN's NHWC kernels sum in another order than the CPU's: a few ulps per layer.
    torch.testing.assert_close(gpu(x.cuda()).cpu(), expected, rtol=1e-4, atol=1e-4)
