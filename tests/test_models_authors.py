"""Tests for `build(..., variant="authors")`: the authors' PyTorch models, exactly.

The references are independent of the code under test:

- parameter counts written out by hand below, from the authors' `model/*.py`;
- with PyTorch installed, the authors' own classes (verbatim copies in
  `tests/authors_reference/`): their parameter counts, and their logits and
  BatchNorm statistics on the same input after copying their weights into the
  Keras model, in eval and in training mode;
- a NumPy forward pass of the authors' ResNet-20 (padding, option-A
  shortcuts, BatchNorm), which runs without PyTorch;
- the distributions of the initial weights, against the laws their code
  draws from, within bounds computed from the sample sizes.
"""

import importlib.util
import math
import pathlib

import keras
import numpy as np
import pytest

from bisam_keras import models
from bisam_keras.models.authors import OptionAShortcut
from bisam_keras.models.fused_batch_norm import FusedBatchNormalization
from bisam_keras.models.wide_resnet import CONFIGS as WIDE_RESNET_CONFIGS

REFERENCE = pathlib.Path(__file__).parent / "authors_reference"
FLOAT32_UNIT_ROUNDOFF = 2.0**-24

# --------------------------------------------------------------------------- #
# Hand counts of trainable parameters, from the authors' model/*.py.
# --------------------------------------------------------------------------- #


def conv(c_in, c_out, k=3, bias=False):
    return k * k * c_in * c_out + (c_out if bias else 0)


def bn(c):
    return 2 * c


def linear(c_in, c_out):
    return c_in * c_out + c_out


def hand_resnet(n, k):
    """model/resnet.py: option-A shortcuts carry no parameters."""
    total = conv(3, 16) + bn(16)
    c_in = 16
    for c in (16, 32, 64):
        total += n * (conv(c, c) + 2 * bn(c)) + conv(c_in, c) + (n - 1) * conv(c, c)
        c_in = c
    return total + linear(64, k)


def hand_wrn(depth, widen, k):
    """model/wide_res_net.py: per stage one DownsampleUnit and (depth - 4) // 6 BasicUnits."""
    total, c_in = conv(3, 16), 16
    for c in (16 * widen, 32 * widen, 64 * widen):
        total += bn(c_in) + conv(c_in, c) + bn(c) + conv(c, c) + conv(c_in, c, 1)
        total += (depth - 4) // 6 * (2 * bn(c) + 2 * conv(c, c))
        c_in = c
    return total + bn(c_in) + linear(c_in, k)


VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"] + [512] * 4 + ["M"] + [512] * 4


def hand_vgg(cfg, k):
    """model/vgg.py: biased 3x3 convs with BN, then Linear(512, 512) twice and Linear(512, k)."""
    total, c_in = 0, 3
    for c in cfg:
        if c != "M":
            total += conv(c_in, c, bias=True) + bn(c)
            c_in = c
    return total + 2 * linear(512, 512) + linear(512, k)


def hand_densenet(blocks, growth, k):
    """model/densenet.py (DenseNet121: blocks 6, 12, 24, 16, growth 32)."""
    c = 2 * growth
    total = conv(3, c)
    for i, n in enumerate(blocks):
        for _ in range(n):
            total += bn(c) + conv(c, 4 * growth, 1) + bn(4 * growth) + conv(4 * growth, growth)
            c += growth
        if i < len(blocks) - 1:
            total += bn(c) + conv(c, c // 2, 1)
            c //= 2
    return total + bn(c) + linear(c, k)


def hand_imagenet_resnet(blocks, k):
    """model/resnet_imagenet.py: 3x3 stride-2 stem, bottlenecks with conv + BN shortcuts."""
    total, c_in = conv(3, 64) + bn(64), 64
    for stage, n in enumerate(blocks):
        planes = 64 * 2**stage
        for block in range(n):
            total += conv(c_in, planes, 1) + bn(planes) + conv(planes, planes) + bn(planes)
            total += conv(planes, 4 * planes, 1) + bn(4 * planes)
            if block == 0:
                total += conv(c_in, 4 * planes, 1) + bn(4 * planes)
            c_in = 4 * planes
    return total + linear(c_in, k)


# name: (hand count, the count of the authors' classes at 10 classes (1000 for ImageNet),
#        printed by tests/authors_reference with PyTorch 2.13, cross-checked below).
EXPECTED = {
    "resnet20": (lambda k: hand_resnet(3, k), 269_722),
    "resnet32": (lambda k: hand_resnet(5, k), 464_154),
    "resnet44": (lambda k: hand_resnet(7, k), 658_586),
    "resnet56": (lambda k: hand_resnet(9, k), 853_018),
    "resnet110": (lambda k: hand_resnet(18, k), 1_727_962),
    "wrn16_8": (lambda k: hand_wrn(16, 8, k), 17_158_106),
    "wrn28_2": (lambda k: hand_wrn(28, 2, k), 1_855_578),
    "wrn28_10": (lambda k: hand_wrn(28, 10, k), 46_160_474),
    "vgg19_bn": (lambda k: hand_vgg(VGG19, k), 20_565_834),
    "densenet121": (lambda k: hand_densenet((6, 12, 24, 16), 32, k), 6_956_298),
    "ResNet50": (lambda k: hand_imagenet_resnet((3, 4, 6, 3), k), 25_549_352),
}
HEAVY = {"resnet110", "wrn16_8", "wrn28_10", "vgg19_bn", "densenet121", "ResNet50"}


def heavy(name):
    return pytest.param(name, marks=pytest.mark.slow) if name in HEAVY else name


def trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def default_classes(name):
    return 1000 if name == "ResNet50" else 10


def test_hand_counts_match_the_published_figures():
    # ResNet-56 853,018 (issue 11, the authors' README table: 0.85M); ResNet-20 0.27M.
    assert hand_resnet(9, 10) == 853_018
    for name, (hand, published) in EXPECTED.items():
        assert hand(default_classes(name)) == published, name


@pytest.mark.parametrize("name", [heavy(n) for n in EXPECTED])
def test_authors_parameter_counts(name):
    k = default_classes(name)
    model = models.build(name, k, variant="authors")
    assert trainable_count(model) == EXPECTED[name][0](k)
    model = models.build(name, 7, variant="authors")
    assert trainable_count(model) == EXPECTED[name][0](7)


def test_resnet56_differs_from_the_zoo_by_the_projection_shortcuts():
    keras_count = trainable_count(models.build("resnet56", 10))
    authors_count = trainable_count(models.build("resnet56", 10, variant="authors"))
    # Two projections: conv1x1(16->32) + BN(32) and conv1x1(32->64) + BN(64).
    assert keras_count - authors_count == conv(16, 32, 1) + bn(32) + conv(32, 64, 1) + bn(64)


# --------------------------------------------------------------------------- #
# Options and errors.
# --------------------------------------------------------------------------- #


def test_variants_and_options():
    assert models.variants("resnet56") == ["authors", "keras"]
    assert models.variants("ResNet50") == ["authors", "keras"]
    assert models.variants("EfficientNetV2B0") == ["keras"]
    assert models.options("wrn28_2", "authors") == ["dropout", "sync_batchnorm", "weight_decay"]
    assert models.options("vgg19_bn", "authors") == ["dropout", "sync_batchnorm", "weight_decay"]
    assert models.options("ResNet50", "authors") == ["sync_batchnorm", "weight_decay"]
    assert "pretrained" in models.options("ResNet50")


def test_keras_variant_is_the_default():
    default = models.build("resnet20", 10)
    explicit = models.build("resnet20", 10, variant="keras")
    assert trainable_count(default) == trainable_count(explicit) == 272_474


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("resnet20", {"variant": "torch"}, r"`variant` must be one of .*variant='torch'"),
        ("resnet20", {"variant": None}, r"`variant` must be one of .*variant=None"),
        ("vit_b16", {"variant": "authors"}, r"name='vit_b16', variant='authors'"),
        ("MobileNet", {"variant": "authors"}, r"name='MobileNet', variant='authors'"),
        ("resnet20", {"variant": "authors", "dropout": 0.1}, r"Received unknown: \['dropout'\]"),
        ("ResNet50", {"variant": "authors", "pretrained": True}, r"unknown: \['pretrained'\]"),
        ("wrn28_2", {"variant": "authors", "dropout": 1.0}, r"dropout=1.0"),
        ("vgg19_bn", {"variant": "authors", "input_shape": (16, 16, 3)}, r"at least 32x32"),
        ("resnet20", {"variant": "authors", "num_classes": 1}, r"num_classes=1"),
    ],
)
def test_bad_arguments_raise_value_error(name, kwargs, match):
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        models.build(name, **kwargs)


def test_option_a_shortcut_against_numpy():
    x = np.random.default_rng(0).normal(size=(2, 5, 6, 3)).astype("float32")
    y = np.asarray(OptionAShortcut(2)(x))
    expected = np.zeros((2, 3, 3, 7), "float32")
    expected[..., 2:5] = x[:, ::2, ::2, :]
    np.testing.assert_array_equal(y, expected)
    with pytest.raises(ValueError, match=r"`pad` must be an int >= 0. Received: pad=-1"):
        OptionAShortcut(-1)


def test_unbiased_moving_variance_against_numpy():
    x = np.random.default_rng(1).normal(2.0, 3.0, size=(4, 3, 3, 5)).astype("float32")
    layer = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, unbiased_moving_variance=True)
    layer(x, training=True)
    values = x.reshape(-1, 5).astype(np.float64)
    # PyTorch: running = 0.9 * running + 0.1 * batch, the batch variance with n - 1.
    expected_mean = 0.1 * values.mean(0)
    expected_var = 0.9 + 0.1 * values.var(0, ddof=1)
    # float32 statistics over n = 36 values of size ~10: relative error ~ n * u.
    np.testing.assert_allclose(layer.moving_mean.numpy(), expected_mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected_var, rtol=1e-5)
    assert FusedBatchNormalization.from_config(layer.get_config()).unbiased_moving_variance


def test_authors_batch_norm_has_pytorch_defaults():
    model = models.build("resnet20", 10, variant="authors")
    norms = [layer for layer in model.layers if isinstance(layer, FusedBatchNormalization)]
    assert len(norms) == 19
    for layer in norms:
        assert (layer.momentum, layer.epsilon, layer.unbiased_moving_variance) == (0.9, 1e-5, True)


def test_save_and_load_round_trip(tmp_path):
    model = models.build("resnet20", 10, variant="authors")
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype("float32")
    path = tmp_path / "authors_resnet20.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_dropout_layers_where_the_authors_put_them():
    # WRN-28-2: one dropout per unit, (1 + 4) units in each of 3 stages; none at rate 0.
    wrn = models.build("wrn28_2", 10, variant="authors", dropout=0.3)
    dropouts = [layer for layer in wrn.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(dropouts) == 15 and all(layer.rate == 0.3 for layer in dropouts)
    assert not any(
        isinstance(layer, keras.layers.Dropout)
        for layer in models.build("wrn28_2", 10, variant="authors").layers
    )
    # VGG: nn.Dropout() (p = 0.5) before each of the two hidden linear layers.
    vgg = models.build("vgg11_bn", 10, variant="authors")
    dropouts = [layer.name for layer in vgg.layers if isinstance(layer, keras.layers.Dropout)]
    assert dropouts == ["classifier_0", "classifier_3"]
    assert vgg.get_layer("classifier_0").rate == 0.5


def test_logits_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = models.build("resnet20", 10, variant="authors")
        y = model(np.zeros((2, 32, 32, 3), "float32"), training=False)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert y.dtype == "float32"


def test_sync_batchnorm_builds():
    model = models.build("resnet20", 10, variant="authors", sync_batchnorm=True)
    assert any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


# --------------------------------------------------------------------------- #
# A NumPy forward pass of the authors' ResNet-20 (no PyTorch needed).
# --------------------------------------------------------------------------- #


def np_conv(x, kernel, stride, padding):
    """PyTorch's conv2d (NHWC, HWIO kernel): symmetric zero padding, then a strided window."""
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    k = kernel.shape[0]
    height = (x.shape[1] - k) // stride + 1
    width = (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], height, width, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            patch = x[:, i : i + stride * height : stride, j : j + stride * width : stride, :]
            out += patch @ kernel[i, j]
    return out


def np_bn(x, layer, training):
    gamma, beta, moving_mean, moving_var = (w.astype(np.float64) for w in layer.get_weights())
    if training:
        mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    else:
        mean, var = moving_mean, moving_var
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def np_authors_resnet(model, x, blocks, training):
    def weight(name):
        return model.get_layer(name).get_weights()[0].astype(np.float64)

    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    out = relu(np_bn(np_conv(x, weight("conv1"), 1, 1), model.get_layer("bn1"), training))
    for stage, planes in enumerate((16, 32, 64), start=1):
        for block in range(blocks):
            name = f"layer{stage}_{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            y = np_conv(out, weight(f"{name}_conv1"), stride, 1)
            y = relu(np_bn(y, model.get_layer(f"{name}_bn1"), training))
            y = np_bn(
                np_conv(y, weight(f"{name}_conv2"), 1, 1), model.get_layer(f"{name}_bn2"), training
            )
            shortcut = out
            if stride != 1:  # option A: out[:, ::2, ::2] with planes // 4 zero channels each side
                pad = planes // 4
                shortcut = np.pad(out[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
            out = relu(y + shortcut)
    kernel, bias = model.get_layer("logits").get_weights()
    return out.mean((1, 2)) @ kernel + bias


def randomize_batch_norms(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.2, c),
                    rng.normal(0, 0.2, c),
                    rng.uniform(0.5, 1.5, c),
                ]  # fmt: skip
            )


def accumulation_tolerance(model):
    """Relative float32 tolerance of a forward pass, from its accumulation lengths.

    A dot product of length K in float32 errs by at most ~K * u relative to the
    sum of its absolute terms (u = 2^-24); BatchNorm keeps every layer at unit
    scale, so the layers' errors add: sum over the weighted layers of their fan-in K.
    Two implementations err independently, hence the factor 2.
    """
    fans = [
        int(np.prod(layer.kernel.shape[:-1]))
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
    ]
    return 2 * sum(fans) * FLOAT32_UNIT_ROUNDOFF


@pytest.mark.parametrize("training", [False, True])
def test_resnet20_against_a_numpy_forward_pass(training):
    keras.utils.set_random_seed(3)
    model = models.build("resnet20", 10, variant="authors")
    rng = np.random.default_rng(3)
    randomize_batch_norms(model, rng)
    x = rng.normal(size=(4, 32, 32, 3))
    ours = model(x.astype("float32"), training=training).numpy()
    expected = np_authors_resnet(model, x, 3, training)
    scale = np.abs(expected).max()
    assert scale > 0.1
    np.testing.assert_allclose(ours, expected, atol=accumulation_tolerance(model) * scale)


# --------------------------------------------------------------------------- #
# Initial weights: the laws of the authors' code.
# --------------------------------------------------------------------------- #


def kernels(model, kind):
    return [layer for layer in model.layers if type(layer) is kind]


def check_normal(w, std, label):
    """`w` ~ N(0, std^2), untruncated, within 5 standard errors of each statistic."""
    n = w.size
    assert abs(w.mean()) <= 5 * std / math.sqrt(n), label
    # The sample standard deviation of n normals has standard error std / sqrt(2n).
    assert abs(w.std() - std) <= 5 * std / math.sqrt(2 * n), label
    # Untruncated: P(|w| > 2 std) = 0.0455 (Keras' he_normal truncates there: 0).
    if n >= 4096:
        p = math.erfc(2 / math.sqrt(2))
        tail = np.mean(np.abs(w) > 2 * std)
        assert abs(tail - p) <= 5 * math.sqrt(p * (1 - p) / n), label


def check_uniform(w, bound, label):
    """`w` ~ U(-bound, bound): inside the bound and reaching near it."""
    n = w.size
    assert np.abs(w).max() <= bound * (1 + 1e-6), label
    # P(max |w| < bound * (1 - 20 / n)) = (1 - 20 / n)^n < e^-20.
    assert np.abs(w).max() >= bound * (1 - 20 / n), label
    # Uniform: std = bound / sqrt(3); the sample std has standard error <= 0.26 bound / sqrt(n).
    assert abs(w.std() - bound / math.sqrt(3)) <= 5 * 0.26 * bound / math.sqrt(n), label


def test_resnet56_initial_weights():
    keras.utils.set_random_seed(4)
    model = models.build("resnet56", 100, variant="authors")
    convs = kernels(model, keras.layers.Conv2D)
    assert len(convs) == 55
    for layer in convs:
        w = layer.kernel.numpy()
        fan_in = int(np.prod(w.shape[:3]))  # kaiming_normal_ defaults: fan_in, gain sqrt(2)
        check_normal(w, math.sqrt(2 / fan_in), layer.name)
    logits = model.get_layer("logits")
    check_normal(logits.kernel.numpy(), math.sqrt(2 / 64), "logits")
    check_uniform(logits.bias.numpy(), 1 / math.sqrt(64), "logits bias")  # nn.Linear default


def test_wide_resnet_initial_weights():
    keras.utils.set_random_seed(5)
    model = models.build("wrn28_2", 10, variant="authors")
    for layer in kernels(model, keras.layers.Conv2D):
        w = layer.kernel.numpy()
        check_normal(w, math.sqrt(2 / np.prod(w.shape[:3])), layer.name)  # fan_in, relu
    logits = model.get_layer("logits")
    assert not np.any(logits.kernel.numpy()) and not np.any(logits.bias.numpy())


@pytest.mark.slow
def test_vgg_initial_weights():
    keras.utils.set_random_seed(6)
    model = models.build("vgg19_bn", 10, variant="authors")
    for layer in kernels(model, keras.layers.Conv2D):
        w = layer.kernel.numpy()
        fan_out = w.shape[0] * w.shape[1] * w.shape[3]  # their n = k * k * out_channels
        check_normal(w, math.sqrt(2 / fan_out), layer.name)
        assert not np.any(layer.bias.numpy())
    for layer in kernels(model, keras.layers.Dense):
        check_uniform(layer.kernel.numpy(), 1 / math.sqrt(512), layer.name)
    check_uniform(model.get_layer("classifier_1").bias.numpy(), 1 / math.sqrt(512), "bias")


@pytest.mark.parametrize("name", ["densenet121", "ResNet50"])
@pytest.mark.slow
def test_pytorch_default_initial_weights(name):
    keras.utils.set_random_seed(7)
    model = models.build(name, 1000, variant="authors")
    for layer in kernels(model, keras.layers.Conv2D) + kernels(model, keras.layers.Dense):
        w = layer.kernel.numpy()
        check_uniform(w, 1 / math.sqrt(np.prod(w.shape[:-1])), layer.name)
    logits = model.get_layer("logits")
    check_uniform(logits.bias.numpy(), 1 / math.sqrt(logits.kernel.shape[0]), "logits bias")


# --------------------------------------------------------------------------- #
# Against the authors' PyTorch classes (skipped without PyTorch).
# --------------------------------------------------------------------------- #


def reference_module(module_name):
    spec = importlib.util.spec_from_file_location(
        f"authors_reference_{module_name}", REFERENCE / f"{module_name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def torch_model(name, num_classes):
    """The authors' model of `name`, as their utility/setup.py builds it."""
    if name.startswith("resnet"):
        return getattr(reference_module("resnet"), name)(num_classes=num_classes)
    if name.startswith("wrn"):
        depth, widen = WIDE_RESNET_CONFIGS[name]
        wide = reference_module("wide_res_net")
        return wide.WideResNet(depth, widen, 0.0, in_channels=3, labels=num_classes)
    if name.startswith("vgg"):
        return getattr(reference_module("vgg"), name)(num_classes=num_classes)
    if name == "densenet121":
        return reference_module("densenet").DenseNet121(num_classes=num_classes)
    imagenet = reference_module("resnet_imagenet")
    model = getattr(imagenet, name)()
    model.classifier = type(model.classifier)(2048, num_classes)
    return model


CLASSIFIERS = {"linear", "f.8_classification", "classifier.6", "classifier"}


def copy_torch_weights(torch_net, model):
    """Copies every Conv2d, BatchNorm2d and Linear of `torch_net` into `model` by name."""
    import torch

    copied = set()
    for path, module in torch_net.named_modules():
        name = "logits" if path in CLASSIFIERS else path.replace(".", "_")
        to_numpy = lambda t: t.detach().numpy()  # noqa: E731
        if isinstance(module, torch.nn.Conv2d):
            weights = [to_numpy(module.weight).transpose(2, 3, 1, 0)]  # OIHW -> HWIO
        elif isinstance(module, torch.nn.Linear):
            weights = [to_numpy(module.weight).T]
        elif isinstance(module, torch.nn.BatchNorm2d):
            weights = [module.weight, module.bias, module.running_mean, module.running_var]
            weights = [to_numpy(w) for w in weights]
        else:
            continue
        if getattr(module, "bias", None) is not None and not isinstance(
            module, torch.nn.BatchNorm2d
        ):
            weights.append(to_numpy(module.bias))
        model.get_layer(name).set_weights(weights)
        copied.add(name)
    assert copied == {layer.name for layer in model.layers if layer.weights}


def randomize_torch(torch_net, seed):
    """Random BatchNorm affine parameters and statistics, and classifier (theirs may be zero)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in torch_net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=generator))
                module.bias.copy_(0.2 * torch.randn(c, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(c, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            elif isinstance(module, torch.nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
                module.weight.mul_(1 / math.sqrt(module.in_features))
                module.bias.copy_(0.1 * torch.randn(module.out_features, generator=generator))


@pytest.mark.parametrize("name", [heavy(n) for n in EXPECTED])
def test_parameter_counts_equal_the_authors_classes(name):
    pytest.importorskip("torch")
    k = default_classes(name)
    torch_count = sum(p.numel() for p in torch_model(name, k).parameters() if p.requires_grad)
    assert torch_count == EXPECTED[name][1] == EXPECTED[name][0](k)
    assert trainable_count(models.build(name, k, variant="authors")) == torch_count


EQUIVALENCE = [
    ("resnet20", (32, 32, 3)),
    pytest.param("resnet56", (32, 32, 3), marks=pytest.mark.slow),
    ("wrn28_2", (32, 32, 3)),
    pytest.param("vgg19_bn", (32, 32, 3), marks=pytest.mark.slow),
    pytest.param("densenet121", (32, 32, 3), marks=pytest.mark.slow),
    pytest.param("ResNet50", (224, 224, 3), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, input_shape", EQUIVALENCE)
def test_logits_equal_the_authors_model(name, input_shape):
    """Their weights in our model: the same logits in eval and training mode.

    Training mode also updates the BatchNorm statistics, compared afterwards.
    VGG's dropout is off on both sides (`p = 0`) so that training mode is
    deterministic.
    """
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    num_classes = 10
    torch_net = torch_model(name, num_classes)
    randomize_torch(torch_net, seed=1)
    kwargs = {}
    if name.startswith("vgg"):
        kwargs["dropout"] = 0.0
        for module in torch_net.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    model = models.build(name, num_classes, input_shape=input_shape, variant="authors", **kwargs)
    copy_torch_weights(torch_net, model)
    tolerance = accumulation_tolerance(model)
    x = np.random.default_rng(8).normal(size=(4, *input_shape)).astype("float32")
    x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    for training in (False, True):
        torch_net.train(training)
        with torch.no_grad():
            expected = torch_net(x_torch).numpy()
        ours = model(x, training=training).numpy()
        scale = np.abs(expected).max()
        assert scale > 0.1
        np.testing.assert_allclose(ours, expected, atol=tolerance * scale, err_msg=str(training))
    # After one training-mode pass: moving statistics (PyTorch: unbiased running variance).
    for path, module in torch_net.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            layer = model.get_layer(path.replace(".", "_"))
            for ours, theirs in (
                (layer.moving_mean, module.running_mean),
                (layer.moving_variance, module.running_var),
            ):
                theirs = theirs.numpy()
                atol = tolerance * max(1.0, np.abs(theirs).max())
                np.testing.assert_allclose(ours.numpy(), theirs, atol=atol, err_msg=path)
