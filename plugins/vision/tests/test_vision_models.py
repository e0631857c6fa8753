"""Models: seeded builds, shapes, parameter names, initialisation (Frankle & Carbin fig. 2)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ticketx.task import TaskError
from ticketx_vision.models import InputShape, build_model, output_layer_params, prunable_weights
from ticketx_vision.options import MODELS

MNIST = InputShape(channels=1, height=28, width=28, classes=10)
CIFAR = InputShape(channels=3, height=32, width=32, classes=10)


def build(name: str, seed: int = 0, shape: InputShape = CIFAR, dropout: float = 0.0) -> nn.Module:
    return build_model(name, shape, dropout=dropout, seed=seed)


@pytest.mark.parametrize("name", MODELS)
def test_same_seed_same_weights_and_global_rng_untouched(name: str) -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build(name, seed=7)
    assert torch.equal(torch.get_rng_state(), state), "building a model moved the caller's RNG"
    torch.manual_seed(456)  # the global seed must not matter
    b = build(name, seed=7)
    c = build(name, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() == sc.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    weights = prunable_weights(a)
    assert all(not torch.equal(sa[k], sc[k]) for k in weights), "a different seed left a weight equal"


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["mnist", "cifar"])
def test_forward_shapes(name: str, shape: InputShape) -> None:
    model = build(name, shape=shape)
    x = torch.randn(2, shape.channels, shape.height, shape.width)
    out = model(x)
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_other_class_counts_reach_the_output_layer() -> None:
    shape = InputShape(channels=3, height=16, width=16, classes=7)
    for name in MODELS:
        model = build(name, shape=shape)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_lenet_and_conv_sizes_match_the_paper() -> None:
    lenet = build("lenet300_100", shape=MNIST)
    assert sum(p.numel() for p in lenet.parameters()) == 266_610  # 784*300+300 + 300*100+100 + 100*10+10
    # Frankle & Carbin fig. 2: the first FC layer of Conv-2/4/6 on CIFAR-10 is 16384/8192/4096 x 256
    for name, fan_in in (("conv2", 16384), ("conv4", 8192), ("conv6", 4096)):
        assert build(name).fc1.weight.shape == (256, fan_in)
    assert sum(isinstance(m, nn.Conv2d) for m in build("vgg19").modules()) == 16


def test_prunable_names() -> None:
    lenet = build("lenet300_100", shape=MNIST)
    assert set(prunable_weights(lenet)) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert set(prunable_weights(build("conv2"))) == {
        "features.0.weight", "features.2.weight", "fc1.weight", "fc2.weight", "fc3.weight"}
    # convs + FC layers; ResNet-20 has 19 3x3 convs, 2 1x1 projections and the fc
    counts = {"conv4": 4 + 3, "conv6": 6 + 3, "vgg19": 16 + 1, "resnet20": 19 + 2 + 1}
    for name, count in counts.items():
        model = build(name)
        names = prunable_weights(model)
        assert len(names) == count, name
        # exactly the parameters with two or more dims: never a bias or a BatchNorm weight
        assert set(names) == {n for n, p in model.named_parameters() if p.dim() >= 2}
        params = dict(model.named_parameters())
        assert all(names[n] is params[n] for n in names)
    resnet = prunable_weights(build("resnet20"))
    assert "layer2.0.shortcut.0.weight" in resnet and "layer1.0.shortcut.0.weight" not in resnet


def test_head_is_the_output_layer() -> None:
    assert output_layer_params(build("lenet300_100")) == {"fc3.weight", "fc3.bias"}
    assert output_layer_params(build("conv4")) == {"fc3.weight", "fc3.bias"}
    assert output_layer_params(build("vgg19")) == {"fc.weight", "fc.bias"}
    assert output_layer_params(build("resnet20")) == {"fc.weight", "fc.bias"}
    assert build("resnet20").fc.out_features == 10


def test_head_of_a_foreign_model_is_an_error() -> None:
    with pytest.raises(TaskError, match="Linear was not built by the vision plugin"):
        output_layer_params(nn.Linear(3, 2))


def test_glorot_init_for_lenet_and_conv() -> None:
    lenet = build("lenet300_100", shape=MNIST)
    expected = math.sqrt(2 / (784 + 300))
    assert lenet.fc1.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert lenet.fc1.weight.mean().abs().item() < 0.05 * expected
    assert all(torch.all(m.bias == 0) for m in (lenet.fc1, lenet.fc2, lenet.fc3))
    conv = build("conv6").features[12]  # the last 3x3 conv, 256 -> 256 (5 modules per conv pair)
    fan_in = fan_out = 256 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.02)
    assert torch.all(conv.bias == 0)


def test_kaiming_init_and_batchnorm_for_vgg_and_resnet() -> None:
    vgg = build("vgg19")
    conv = vgg.features[-3]  # the last conv, 512 -> 512
    assert isinstance(conv, nn.Conv2d) and conv.bias is None
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)
    resnet = build("resnet20")
    conv = resnet.layer3[2].conv2
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert torch.all(resnet.fc.bias == 0)
    for model in (vgg, resnet):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


@pytest.mark.parametrize("name", ["lenet300_100", "conv2"])
def test_dropout_acts_in_training_only(name: str) -> None:
    x = torch.randn(4, 3, 32, 32)
    model = build(name, dropout=0.5)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    plain = build(name, dropout=0.0).train()
    assert torch.equal(plain(x), plain(x))


def test_images_too_small_for_the_pools() -> None:
    tiny = InputShape(channels=1, height=4, width=4, classes=2)
    assert build("conv4", shape=tiny)(torch.randn(2, 1, 4, 4)).shape == (2, 2)
    with pytest.raises(TaskError, match=r"task.model 'conv6' needs images of at least 8x8 pixels.*got 4x4"):
        build("conv6", shape=tiny)


def test_unknown_model_name() -> None:
    with pytest.raises(TaskError, match=r"task.model must be one of lenet300_100, .*resnet20, got 'vgg16'"):
        build("vgg16")
