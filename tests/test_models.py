"""Every model: output shape, no NaN, every parameter receives a gradient."""

import pytest
import torch

import neuralode
from neuralode import KineticEnergy, create_model, list_models
from neuralode.models import MNISTHead, MNISTStem

VARIANTS = {
    "ode": {},
    "ode-time": {"dynamics": "time"},
    "ode-hypernet": {"dynamics": "hypernet"},
    "ode-augmented": {"augment_dim": 5},
    "ode-adjoint": {"adjoint": True},
    "ode-regularized": {"regularizers": [KineticEnergy(0.1)]},
    "resnet": {"num_blocks": 3},
    "odenet": {},
    "odenet-augmented": {"augment_dim": 4},
    "odenet-resnet": {},
}


def test_every_registered_model_is_tested():
    assert set(list_models()) <= {
        name.split("-aug")[0]
        if name.startswith("odenet-aug")
        else name.split("-")[0]
        if name.startswith("ode-")
        else name
        for name in VARIANTS
    }


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_model_shape_no_nan_all_parameters_get_gradients(variant):
    name = variant if variant in list_models() else variant.split("-")[0]
    model = create_model(name, **VARIANTS[variant])
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


def test_ode_and_resnet_share_stem_and_head():
    ode, res = create_model("ode", hidden=32), create_model("resnet", hidden=32, num_blocks=4)
    for part in ("stem", "head"):
        a = [p.shape for p in getattr(ode, part).parameters()]
        b = [p.shape for p in getattr(res, part).parameters()]
        assert a == b
    assert isinstance(ode.stem, MNISTStem) and isinstance(res.head, MNISTHead)
    # the middle: one MLP for the ODE, num_blocks MLPs of the same shape for the ResNet
    n_ode = sum(p.numel() for p in ode.ode.parameters())
    n_res = sum(p.numel() for p in res.blocks.parameters())
    assert n_res == 4 * n_ode


def test_stem_downsamples_28_14_7():
    stem = MNISTStem(64)
    x = torch.randn(2, 1, 28, 28)
    assert stem.net[:2](x).shape[-2:] == (28, 28)
    assert stem.net[:4](x).shape[-2:] == (14, 14)
    assert stem.net[:6](x).shape[-2:] == (7, 7)
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
