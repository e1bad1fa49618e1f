"""Every model: output shape, no NaN, every parameter receives a gradient."""

import pytest
import torch

import neuralode
from neuralode import KineticEnergy, create_model, list_models
from neuralode.models import MNISTHead, MNISTStem, StridedStem

VARIANTS = {
    "ode": {},
    "ode-time": {"dynamics": "time"},
    "ode-hypernet": {"dynamics": "hypernet"},
    "ode-augmented": {"augment_dim": 5},
    "ode-adjoint": {"adjoint": True},
    "ode-regularized": {"regularizers": [KineticEnergy(0.1)]},
    "resnet": {"num_blocks": 3},
    "ode-strided": {},
    "resnet-strided": {"num_blocks": 2},
    "odenet": {},
    "odenet-augmented": {"augment_dim": 4},
    "odenet-resnet": {},
}


def _registered_name(variant):
    return variant if variant in list_models() else variant.split("-")[0]


def test_every_registered_model_is_tested():
    assert set(list_models()) <= {_registered_name(v) for v in VARIANTS}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_model_shape_no_nan_all_parameters_get_gradients(variant):
    model = create_model(_registered_name(variant), **VARIANTS[variant])
    x = torch.randn(3, 1, 28, 28)
    y = torch.tensor([1, 7, 3])
    out = model(x)
    assert out.shape == (3, 10)
    assert torch.isfinite(out).all()
    loss = torch.nn.functional.cross_entropy(out, y)
    reg = neuralode.regularization_loss(model)
    if reg is not None:
        loss = loss + reg
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    nonfinite = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not nonfinite


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_the_tutorials_classifier_and_its_resnet_twin_exactly():
    """The tutorial's MNIST Neural ODE (290,570 parameters) and its ResNet twin (356,938) are
    the defaults, layer for layer."""
    ode, res = create_model("ode"), create_model("resnet")
    assert (_count(ode), _count(res)) == (290_570, 356_938)
    convs = [m for m in ode.stem.net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (1, 32, (3, 3), (1, 1), (1, 1)),
        (32, 64, (3, 3), (2, 2), (1, 1)),
        (64, 64, (3, 3), (2, 2), (1, 1)),
    ]
    kinds = [type(m).__name__ for m in ode.stem.net]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 3 + ["Flatten", "Linear"]
    assert (ode.stem.net[-1].in_features, ode.stem.net[-1].out_features) == (64 * 7 * 7, 64)
    dyn = [(m.in_features, m.out_features) for m in ode.ode.func.net if hasattr(m, "in_features")]
    assert dyn == [(64, 128), (128, 128), (128, 64)]
    assert all(type(m).__name__ in ("Linear", "Tanh") for m in ode.ode.func.net)
    assert ode.ode.method == "dopri5" and ode.ode.integration_times.tolist() == [0.0, 1.0]
    assert [type(m).__name__ for m in ode.head.net] == ["ReLU", "Linear"]
    assert len(res.blocks.funcs) == 6
    for f in res.blocks.funcs:
        assert [(m.in_features, m.out_features) for m in f.net if hasattr(m, "in_features")] == [
            (64, 128),
            (128, 64),
        ]
    for part in ("stem", "head"):  # one stem and head, so the two differ only in the middle
        a = [p.shape for p in getattr(ode, part).parameters()]
        b = [p.shape for p in getattr(res, part).parameters()]
        assert a == b
    assert isinstance(ode.stem, MNISTStem) and isinstance(res.head, MNISTHead)


def test_the_earlier_strided_models_are_kept_under_their_own_names():
    ode, res = create_model("ode-strided"), create_model("resnet-strided")
    assert (_count(ode), _count(res)) == (312_650, 375_050)
    assert isinstance(ode.stem, StridedStem) and isinstance(res.stem, StridedStem)
    with pytest.raises(ValueError, match="unknown stem 'vgg'"):
        create_model("ode", stem="vgg")


def test_stem_downsamples_28_14_7():
    stem = MNISTStem(64)
    x = torch.randn(2, 1, 28, 28)
    assert stem.net[:3](x).shape[-2:] == (28, 28)
    assert stem.net[:6](x).shape[-2:] == (14, 14)
    assert stem.net[:9](x).shape[-2:] == (7, 7)
    assert stem(x).shape == (2, 64)


def test_odenet_is_about_022m_parameters_on_64x6x6_maps():
    model = create_model("odenet")
    n = sum(p.numel() for p in model.parameters())
    assert 0.2e6 < n < 0.23e6
    assert model.stem(torch.randn(1, 1, 28, 28)).shape == (1, 64, 6, 6)
    resnet = create_model("odenet-resnet")
    assert len(resnet.blocks) == 6


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="unknown model 'vit'.*ode.*resnet"):
        create_model("vit")
    with pytest.raises(ValueError, match="unknown dynamics 'rnn'"):
        create_model("ode", dynamics="rnn")


def test_augmented_model_state_is_wider():
    model = create_model("ode", hidden=16, augment_dim=3)
    assert model.head.net[1].in_features == 19
    assert model.ode.func.dim == 19


def test_model_solve_stats_are_collected_without_user_counters():
    model = create_model("ode", adjoint=True)
    out = model(torch.randn(2, 1, 28, 28))
    stats = neuralode.solve_stats(model)
    assert stats.nfe_forward > 0 and stats.nfe_backward == 0
    out.sum().backward()
    assert neuralode.solve_stats(model).nfe_backward > 0
