"""trainables.models: a contract every registered network passes, plus checks of each architecture's shape."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torchvision

from gce_search.trainables.models import MODELS, build_model
from gce_search.trainables.registry import Param


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("in_channels, image_size", [(1, 8), (3, 12)])
def test_every_model_forward_backward(name, in_channels, image_size):
    info = MODELS[name]
    assert info.name == name and info.description
    assert all(isinstance(p, Param) for p in info.params.values())
    torch.manual_seed(0)
    model = build_model({"name": name}, in_channels, 5, image_size)
    x = torch.randn(2, in_channels, image_size, image_size)
    logits = model(x)
    assert logits.shape == (2, 5) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([0, 4])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing[:3]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # eval mode (BatchNorm running statistics) gives finite logits for a batch of one
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x[:1])).all()


@pytest.mark.parametrize("name", MODELS.names())
def test_declared_params_are_builder_keywords_and_defaults_build(name):
    info = MODELS[name]
    import inspect

    sig = inspect.signature(info.impl)
    assert list(sig.parameters)[:3] == ["in_channels", "num_classes", "image_size"]
    for key, param in info.params.items():
        assert key in sig.parameters, f"{name}.{key} is not a keyword of its builder"
        assert sig.parameters[key].default == param.default
        assert param.problem(param.default) is None


def test_models_are_seeded():
    torch.manual_seed(3)
    a = build_model({"name": "small_cnn"}, 1, 10, 28)
    torch.manual_seed(3)
    b = build_model({"name": "small_cnn"}, 1, 10, 28)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_against_torchvision():
    # Our CIFAR variants are torchvision's ImageNet nets with the 7×7 stem conv (3·64·49 weights) replaced by a
    # 3×3 one (3·64·9) and, for DenseNet, without the BatchNorm after the stem (2·64).
    stem_diff = 3 * 64 * 49 - 3 * 64 * 9
    for ours, theirs in (("resnet18", "resnet18"), ("resnet34", "resnet34"), ("resnet50", "resnet50")):
        expected = _count(getattr(torchvision.models, theirs)(num_classes=10)) - stem_diff
        assert _count(build_model({"name": ours}, 3, 10, 32)) == expected, ours
    expected = _count(torchvision.models.densenet121(num_classes=10)) - stem_diff - 2 * 64
    assert _count(build_model({"name": "densenet121"}, 3, 10, 32)) == expected


def test_resnet110_is_6n_plus_2_with_parameter_free_shortcuts():
    model = build_model({"name": "resnet110"}, 3, 10, 32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(convs) + len(linears) == 110  # He et al. 2016: 6·18 + 2 weighted layers
    assert all(c.kernel_size == (3, 3) for c in convs)  # option A shortcuts have no 1×1 convolutions
    assert 1.7e6 < _count(model) < 1.75e6  # He et al. 2016, Table 6: 1.7M


def test_wrn_26_10_layout():
    model = build_model({"name": "wrn_26_10"}, 3, 10, 32)
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) + 1 == 26  # 6n+2 with n = 4 basic blocks per stage, as in Mukhoti et al.'s code
    assert sorted({c.out_channels for c in convs3}) == [16, 160, 320, 640]
    assert model.head.in_features == 640
    small = build_model({"name": "wrn_26_10", "widen": 1}, 3, 10, 32)
    assert small.head.in_features == 64


def test_gap_cnn_layout_and_parameter_count():
    model = build_model({"name": "gap_cnn"}, 1, 10, 28)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(1, 32), (32, 64), (64, 128)]
    assert all(c.bias is None and c.padding == (1, 1) and c.kernel_size == (3, 3) for c in convs)
    # by hand: convs 288 + 18,432 + 73,728; BN 2 x (32 + 64 + 128); linear 128 x 10 + 10
    assert sum(p.numel() for p in model.parameters()) == 288 + 18432 + 73728 + 2 * 224 + 1290 == 94186
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2
    assert isinstance(model[-3], nn.AdaptiveAvgPool2d)


def test_fast_cnn_logit_scale_multiplies_logits():
    torch.manual_seed(0)
    a = build_model({"name": "fast_cnn", "width": 8, "logit_scale": 1.0}, 3, 10, 32).eval()
    torch.manual_seed(0)
    b = build_model({"name": "fast_cnn", "width": 8, "logit_scale": 0.25}, 3, 10, 32).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(b(x), 0.25 * a(x))


def test_mlp_depth_and_width():
    linear = build_model({"name": "mlp", "depth": 0}, 1, 10, 8)
    assert [m.in_features for m in linear.modules() if isinstance(m, nn.Linear)] == [64]
    deep = build_model({"name": "mlp", "depth": 3, "width": 7}, 3, 4, 5)
    assert [(m.in_features, m.out_features) for m in deep.modules() if isinstance(m, nn.Linear)] == \
        [(75, 7), (7, 7), (7, 7), (7, 4)]


def test_channels_last_and_bf16_forward():
    model = build_model({"name": "small_cnn"}, 1, 10, 28).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, 28, 28).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (4, 10) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("cfg, match", [
    ({"name": "resnet19"}, "unknown model 'resnet19'; valid: .*resnet18"),
    ({"name": "mlp", "hidden": 3}, "model.hidden: not a parameter of model 'mlp'; valid: width, depth, dropout"),
    ({"name": "mlp", "width": 0}, r"model.width: got 0; valid: a int in \[1, inf\]"),
    ({"name": "mlp", "dropout": 1.0}, r"model.dropout: got 1.0; valid: a float in \[0, 1\)"),
    ({"name": "resnet18", "width": 2.5}, "model.width: got 2.5"),
    ({"width": 3}, "expected a mapping with a 'name' key"),
])
def test_bad_model_config_names_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        build_model(cfg, 3, 10, 32)


def test_image_too_small_and_bad_shapes():
    with pytest.raises(ValueError, match="'densenet121' needs images of at least 8×8"):
        build_model({"name": "densenet121"}, 3, 10, 4)
    with pytest.raises(ValueError, match="num_classes got 0"):
        build_model({"name": "mlp"}, 3, 0, 8)


def test_trial_config_validates_model_params_from_the_registry():
    from gce_search.trainables.config import resolve
    from gce_search.trainables.registry import ConfigError

    cfg = resolve({"model": {"name": "resnet110", "width": 8}})
    assert cfg["model"] == {"name": "resnet110", "width": 8}
    with pytest.raises(ConfigError, match="model.depth: not a parameter of model 'resnet110'"):
        resolve({"model": {"name": "resnet110", "depth": 56}})


def test_small_models_learn_synthetic_data():
    from gce_search.trainables.data import load_splits

    data = load_splits({"name": "synthetic", "subset": "classes=4,size=8,train=400,test=200,noise=1.5"})
    for name in ("mlp", "small_cnn"):
        torch.manual_seed(0)
        model = build_model({"name": name}, data.in_channels, data.num_classes, data.image_size)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(60):
            idx = torch.randint(0, data.train_y.numel(), (64,))
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.train_x[idx]), data.train_y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = (model(data.test_x).argmax(1) == data.test_y).float().mean().item()
        assert acc > 0.8, (name, acc)
