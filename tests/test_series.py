"""Irregularly sampled series: paths against scipy, per-sample models against one-by-one
solving, gradients against finite differences, the latent ODE's bounds and intensity against
independent computations, and the data helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline

from neuralode.errors import DataError, InvalidArgumentError
from neuralode.series import (
    GRUD,
    ODERNN,
    GRUDeltaT,
    IrregularSeries,
    LatentODE,
    LinearInterpolation,
    NaturalCubicSpline,
    NeuralCDE,
    concat,
    drop_observations,
    load_uea,
    make_periodic,
    make_spirals,
    read_ts,
    split_at,
)

TIGHT = dict(rtol=1e-10, atol=1e-12, eval_rtol=1e-10, eval_atol=1e-12)


def _knots(batch=3, n=8, channels=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.sort(torch.rand(batch, n, generator=g, dtype=torch.float64) * 5, 1).values
    x = torch.randn(batch, n, channels, generator=g, dtype=torch.float64)
    return t, x


def test_natural_cubic_spline_matches_scipy_per_series_length():
    t, x = _knots()
    lengths = torch.tensor([8, 5, 2])
    spline = NaturalCubicSpline(t, x, lengths)
    for b in range(3):
        k = int(lengths[b])
        ref = CubicSpline(t[b, :k].numpy(), x[b, :k].numpy(), bc_type="natural")
        for q in np.linspace(float(t[b, 0]), float(t[b, k - 1]), 13):
            at = torch.full((3,), q, dtype=torch.float64)
            np.testing.assert_allclose(spline.evaluate(at)[b].numpy(), ref(q), atol=1e-12)
            np.testing.assert_allclose(spline.derivative(at)[b].numpy(), ref(q, 1), atol=1e-10)
        # the knots themselves, and constant (zero slope) past the last one
        np.testing.assert_allclose(
            torch.stack([spline.evaluate(t[:, j])[b] for j in range(k)]).numpy(), x[b, :k].numpy(),
            atol=1e-12,
        )  # fmt: skip
        after = torch.full((3,), float(t[b, k - 1]) + 1.0, dtype=torch.float64)
        np.testing.assert_allclose(spline.evaluate(after)[b].numpy(), x[b, k - 1].numpy())
        assert torch.all(spline.derivative(after)[b] == 0)


def test_linear_interpolation_matches_numpy():
    t, x = _knots(batch=2, n=6, channels=1)
    path = LinearInterpolation(t, x)
    for q in np.linspace(0.1, 4.9, 17):
        at = torch.full((2,), q, dtype=torch.float64)
        for b in range(2):
            tb, xb = t[b].numpy(), x[b, :, 0].numpy()
            expect = np.interp(q, tb, xb)
            assert abs(float(path.evaluate(at)[b, 0]) - expect) < 1e-12
            if tb[0] < q < tb[-1]:
                j = np.searchsorted(tb, q) - 1
                slope = (xb[j + 1] - xb[j]) / (tb[j + 1] - tb[j])
                assert abs(float(path.derivative(at)[b, 0]) - slope) < 1e-12


def test_paths_refuse_bad_knots():
    t, x = _knots(batch=1, n=4, channels=1)
    with pytest.raises(InvalidArgumentError, match="strictly increasing"):
        NaturalCubicSpline(t.flip(1), x)
    with pytest.raises(InvalidArgumentError, match="NaN"):
        NaturalCubicSpline(t, x.clone().fill_(float("nan")))
    with pytest.raises(InvalidArgumentError, match="lengths"):
        LinearInterpolation(t, x, torch.tensor([1]))


def _batch(n_series=5, seed=0):
    data = make_spirals(n_series, n_obs=12, seed=seed)
    return drop_observations(data, 0.4, torch.Generator().manual_seed(seed))


def _alone(series: IrregularSeries, b: int) -> IrregularSeries:
    return series[[b]]


def test_ode_rnn_batch_equals_each_series_alone():
    torch.manual_seed(0)
    series = _batch()
    series.mask[1, 2, 0] = 0.0  # a missing channel
    model = ODERNN(2, hidden=6, **TIGHT).double().eval()
    h, hs = model(series)
    for b in range(len(series)):
        h_b, hs_b = model(_alone(series, b))
        torch.testing.assert_close(h[b], h_b[0], atol=1e-9, rtol=1e-9)
        k = int(series.lengths[b])
        torch.testing.assert_close(hs[b, :k], hs_b[0, :k], atol=1e-9, rtol=1e-9)


def test_ode_rnn_evolves_by_its_ode_between_observations():
    """With the GRU update switched off (nothing observed after the first point), the state
    at the end is the first update solved by the ODE alone: scipy's answer."""
    from scipy.integrate import solve_ivp

    torch.manual_seed(1)
    series = _batch(2)
    series.mask[:, 1:] = 0.0
    model = ODERNN(2, hidden=4, **TIGHT).double().eval()
    h, hs = model(series)
    net = model.func.net
    for b in range(2):
        k = int(series.lengths[b])
        t0, t1 = float(series.times[b, 0]), float(series.times[b, k - 1])

        def f(t, y):
            with torch.no_grad():
                return net(torch.tensor(y)).numpy()

        ref = solve_ivp(f, (t0, t1), hs[b, 0].detach().numpy(), rtol=1e-11, atol=1e-12).y[:, -1]
        np.testing.assert_allclose(h[b].detach().numpy(), ref, atol=1e-8)


def _fd_check(loss_of, params, eps=1e-4, rtol=1e-4):
    loss = loss_of()
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        _fd_compare(loss_of, params, grads, eps, rtol)


def _fd_compare(loss_of, params, grads, eps, rtol):
    for p, g in zip(params, grads):
        flat, gflat = p.data.view(-1), g.reshape(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 3)):
            old = float(flat[i])
            flat[i] = old + eps
            up = float(loss_of())
            flat[i] = old - eps
            down = float(loss_of())
            flat[i] = old
            fd = (up - down) / (2 * eps)
            assert abs(fd - float(gflat[i])) <= rtol * max(1.0, abs(fd)), (p.shape, i, fd, gflat[i])


@pytest.mark.parametrize("gradient", ["direct", "checkpoint", "adjoint"])
@pytest.mark.parametrize("interpolation", ["cubic", "linear"])
def test_neural_cde_gradients_by_finite_differences(gradient, interpolation):
    torch.manual_seed(0)
    series = _batch(3)
    model = NeuralCDE(
        2, 2, hidden=3, width=4, interpolation=interpolation, gradient=gradient, **TIGHT
    ).double()
    target = torch.tensor([0, 1, 1])

    def loss_of():
        return torch.nn.functional.cross_entropy(model(series), target)

    _fd_check(loss_of, [model.initial.weight, model.field.g[0].weight, model.readout.bias])


def test_neural_cde_gradient_methods_agree_and_padding_does_not_matter():
    torch.manual_seed(0)
    series = _batch(4)
    outs = {}
    for gradient in ("direct", "checkpoint", "adjoint"):
        torch.manual_seed(3)
        model = NeuralCDE(2, 2, hidden=4, width=8, gradient=gradient, **TIGHT).double()
        out = model(series)
        (g,) = torch.autograd.grad(out.square().sum(), [model.field.g[0].weight])
        outs[gradient] = (out.detach(), g)
    for gradient in ("checkpoint", "adjoint"):
        torch.testing.assert_close(outs[gradient][0], outs["direct"][0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(outs[gradient][1], outs["direct"][1], atol=1e-5, rtol=1e-5)
    # each series alone (no padding) gives its row of the batch
    torch.manual_seed(3)
    model = NeuralCDE(2, 2, hidden=4, width=8, **TIGHT).double()
    for b in range(4):
        torch.testing.assert_close(
            model(_alone(series, b))[0], outs["direct"][0][b], atol=1e-6, rtol=1e-6
        )


def test_latent_ode_and_ode_rnn_gradients_by_finite_differences():
    torch.manual_seed(0)
    series = _batch(3)
    past, future = split_at(series)
    model = LatentODE(2, latent=2, hidden=4, encoder_hidden=3, **TIGHT).double()

    def loss_of():
        return (model.predict(past, future.times) - future.values).square().mean()

    _fd_check(
        loss_of,
        [model.func.f.net[0].weight, model.encoder.func.net[0].weight, model.encoder.cell.bias_hh],
    )


def test_latent_ode_iwae_is_tighter_than_the_elbo_and_refuses_other_gradients():
    torch.manual_seed(0)
    series = _batch(6)
    past, future = split_at(series)
    model = LatentODE(2, latent=3, hidden=8, encoder="rnn").double()
    with torch.no_grad():
        elbo = torch.stack([model.loss(past, future, k=1)["loss"] for _ in range(30)]).mean()
        iwae = torch.stack([model.loss(past, future, k=30)["loss"] for _ in range(3)]).mean()
    assert iwae < elbo  # -IWAE_k <= -ELBO in expectation, by Jensen
    with pytest.raises(InvalidArgumentError, match="needs direct gradients"):
        LatentODE(2, gradient="adjoint")


def test_latent_ode_poisson_intensity_integral_matches_quadrature():
    """The intensity integrated inside the solve equals the trapezoid rule over the decoded
    latent path on a fine grid."""
    torch.manual_seed(0)
    model = LatentODE(1, latent=2, hidden=8, poisson=True, **TIGHT).double()
    z0 = torch.randn(2, 2, dtype=torch.float64)
    start = torch.tensor([0.0, 0.5], dtype=torch.float64)
    grid = start.unsqueeze(1) + torch.linspace(0, 2, 2001, dtype=torch.float64)[1:]
    with torch.no_grad():
        z, integral = model.latent_path(z0, start, grid)
        rate = model.func.intensity(torch.cat((z0.unsqueeze(1), z), 1))
    dt = 2 / 2000
    trapezoid = (rate[:, 1:] + rate[:, :-1]).cumsum(1) * dt / 2
    torch.testing.assert_close(integral, trapezoid, atol=1e-6, rtol=1e-6)


def test_latent_ode_recovers_a_linear_ode_from_noiseless_series():
    """Series of a damped rotation dx/dt = A x, each at its own irregular times: after training,
    extrapolation over the unseen second half is accurate to a few % of the data's variance."""
    torch.manual_seed(0)
    a = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(64):
        t = torch.sort(torch.rand(20, generator=g, dtype=torch.float64) * 6).values
        t -= t[0].clone()
        x0 = torch.randn(2, generator=g, dtype=torch.float64)
        rows.append(torch.stack([torch.linalg.matrix_exp(a * s) @ x0 for s in t]))
        rows[-1] = (t, rows[-1])
    series = IrregularSeries(
        torch.stack([t for t, _ in rows]), torch.stack([x for _, x in rows]),
        torch.ones(64, 20, 2, dtype=torch.float64), torch.full((64,), 20),
    )  # fmt: skip
    past, future = split_at(series)
    model = LatentODE(2, latent=4, hidden=32, encoder="rnn", encoder_hidden=32, obs_std=0.05)
    model = model.double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        model.loss(past, series)["loss"].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model.predict(past, future.times)
    valid = future.valid()  # (the padding of shorter futures is not data)
    rel = float((pred - future.values)[valid].square().mean() / future.values[valid].var())
    assert rel < 0.02, rel


def test_grud_imputes_by_decay_towards_the_mean():
    series = IrregularSeries(
        torch.tensor([[0.0, 1.0, 3.0]]), torch.tensor([[[2.0], [0.0], [0.0]]]),
        torch.tensor([[[1.0], [0.0], [0.0]]]), torch.tensor([3]),
    )  # fmt: skip
    model = GRUD(1, hidden=2, classes=2, means=torch.tensor([0.5]))
    with torch.no_grad():
        model.input_decay.fill_(0.7)
        model.input_decay_bias.fill_(-0.2)
        x_hat = model.imputed(series)
    for i, delta in ((1, 1.0), (2, 3.0)):  # time since the last observation (at t = 0)
        gamma = math.exp(-max(0.0, 0.7 * delta - 0.2))
        assert abs(float(x_hat[0, i, 0]) - (gamma * 2.0 + (1 - gamma) * 0.5)) < 1e-6
    assert float(x_hat[0, 0, 0]) == 2.0


def test_gru_delta_t_reads_time_gaps_and_masks():
    torch.manual_seed(0)
    series = _batch(3)
    model = GRUDeltaT(2, hidden=5, classes=2).double()
    out = model(series)
    later = IrregularSeries(series.times * 2, series.values, series.mask, series.lengths)
    assert out.shape == (3, 2) and not torch.allclose(model(later), out)  # the gaps count
    hidden = series.mask.clone()
    hidden[:, -1] = 0  # a point with nothing observed leaves the state unchanged
    shorter = IrregularSeries(series.times, series.values, hidden, series.lengths)
    cut = series[[0, 1, 2]]
    cut.lengths = series.lengths - 1
    torch.testing.assert_close(model(shorter), model(cut))


def test_drop_split_and_fill():
    data = make_periodic(4, n_obs=20, seed=1)
    dropped = drop_observations(data, 0.5, torch.Generator().manual_seed(0))
    assert dropped.lengths.tolist() == [10] * 4
    for b in range(4):  # the kept points are a subset of the original times, in order
        kept = dropped.times[b]
        assert torch.isin(kept, data.times[b]).all() and (kept.diff() > 0).all()
    past, future = split_at(data)
    assert (past.times.max(1).values < future.times.min(1).values).all()
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\)"):
        drop_observations(data, 1.0, torch.Generator())
    s = IrregularSeries(
        torch.tensor([[0.0, 1.0, 2.0, 3.0]]), torch.tensor([[[9.0], [5.0], [7.0], [1.0]]]),
        torch.tensor([[[0.0], [1.0], [0.0], [1.0]]]), torch.tensor([4]),
    )  # fmt: skip
    assert s.filled()[0, :, 0].tolist() == [5.0, 5.0, 5.0, 1.0]


def test_read_ts_and_uea(tmp_path):
    f = tmp_path / "Toy_TRAIN.ts"
    f.write_text("# comment\n@problemName Toy\n@data\n1,2,3:4,5,6:a\n7,8:9,10:b\n")
    cases, labels = read_ts(f)
    assert labels == ["a", "b"] and cases[0].tolist() == [[1, 4], [2, 5], [3, 6]]
    (tmp_path / "Bad_TRAIN.ts").write_text("@data\n1,2:3:a\n")
    with pytest.raises(DataError, match="different lengths"):
        read_ts(tmp_path / "Bad_TRAIN.ts")
    with pytest.raises(InvalidArgumentError, match="japanese_vowels"):
        load_uea("nope", "train")


def test_japanese_vowels_from_aeons_wheel():
    pytest.importorskip("aeon", reason="the timeseries extra is not installed")
    train, classes = load_uea("japanese_vowels", "train")
    test, _ = load_uea("japanese_vowels", "test", classes=classes)
    # the archive's published shape: 270 + 370 cases, 12 channels, lengths 7..29, 9 classes
    assert (len(train), len(test), train.channels, len(classes)) == (270, 370, 12, 9)
    lengths = torch.cat((train.lengths, test.lengths))
    assert int(lengths.min()) == 7 and int(lengths.max()) == 29


def test_basic_motions_from_aeons_wheel():
    pytest.importorskip("aeon", reason="the timeseries extra is not installed")
    train, classes = load_uea("basic_motions", "train")
    test, _ = load_uea("basic_motions", "test", classes=classes)
    # the archive's published shape: 40 + 40 cases, 6 channels, length 100, 4 classes
    assert (len(train), len(test), train.channels, len(classes)) == (40, 40, 6, 4)
    assert set(torch.cat((train.lengths, test.lengths)).tolist()) == {100}


def _series_with_gaps(batch=4, n=10, channels=3, seed=0, ragged=False):
    """Irregular times, some values missing inside points; full-length rows unless ragged."""
    g = torch.Generator().manual_seed(seed)
    t = torch.sort(torch.rand(batch, n, generator=g, dtype=torch.float64) * 5, 1).values
    x = torch.randn(batch, n, channels, generator=g, dtype=torch.float64).cumsum(1)
    mask = (torch.rand(batch, n, channels, generator=g) > 0.3).double()
    mask[:, 0] = 1.0
    lengths = torch.full((batch,), n)
    if ragged:
        lengths = torch.randint(3, n + 1, (batch,), generator=g)
        for b in range(batch):
            k = int(lengths[b])
            t[b, k:], x[b, k:], mask[b, k:] = t[b, k - 1], x[b, k - 1], 0.0
    return IrregularSeries(t, x * mask, mask, lengths, torch.zeros(batch, dtype=torch.long))


def test_neural_cde_matches_torchcde():
    """Kidger et al.'s own library on the same path data and the same weights: the natural
    cubic spline's values and derivatives, and the model's output (torchcde's ``cdeint``)."""
    torchcde = pytest.importorskip("torchcde")
    series = _series_with_gaps()
    B, n, C = series.values.shape
    model = NeuralCDE(C, 5, hidden=8, width=16, observed="counts", **TIGHT).double().eval()
    # the path's data built by hand: time since the start, values carried forward, counts
    filled = series.values.clone()
    for i in range(1, n):
        filled[:, i] = torch.where(series.mask[:, i] > 0, filled[:, i], filled[:, i - 1])
    x = torch.cat((
        (series.times - series.times[:, :1]).unsqueeze(-1), filled, series.mask.cumsum(1)
    ), -1)  # fmt: skip
    index = torch.arange(n, dtype=torch.float64)
    X = torchcde.CubicSpline(torchcde.natural_cubic_coeffs(x, t=index), t=index)
    ours = model.path(series)
    for s in (0.0, 0.37, 1.0, 4.5, 7.99, 9.0):
        at = torch.tensor(s, dtype=torch.float64)
        close = dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.evaluate(s), X.evaluate(at), **close)
        torch.testing.assert_close(ours.derivative(at), X.derivative(at), **close)

    class Field(torch.nn.Module):
        def forward(self, t, z):
            return model.field.g(z).view(B, 8, 1 + 2 * C)

    with torch.no_grad():
        z0 = model.initial(X.evaluate(X.interval[0]))
        zT = torchcde.cdeint(X=X, func=Field(), z0=z0, t=X.interval, adjoint=False,
                             method="dopri5", rtol=1e-10, atol=1e-12)[:, -1]  # fmt: skip
        torch.testing.assert_close(model(series), model.readout(zT), rtol=1e-6, atol=1e-7)


def test_neural_cde_observed_channels():
    """``none`` drops the observation channels (fewer parameters), ``fraction`` keeps the
    earlier layout (counts over points so far), ``counts`` Kidger et al.'s."""
    series = _series_with_gaps()
    sizes = {o: sum(p.numel() for p in NeuralCDE(3, 5, observed=o).parameters())
             for o in ("none", "counts", "fraction")}  # fmt: skip
    assert sizes["none"] < sizes["counts"] == sizes["fraction"]
    frac = NeuralCDE(3, 5, observed="fraction").double().path(series)
    counts = NeuralCDE(3, 5, observed="counts").double().path(series)
    idx = torch.arange(10, dtype=torch.float64)
    torch.testing.assert_close(frac.evaluate(9.0)[:, 4:], counts.evaluate(9.0)[:, 4:] / 10.0)
    torch.testing.assert_close(counts.evaluate(idx[4].item())[:, 4:], series.mask[:, :5].sum(1))
    with pytest.raises(InvalidArgumentError, match="observed must be one of"):
        NeuralCDE(3, 5, observed="mask")


def test_neural_cde_evaluations_against_torchdiffeq():
    """A batch of series of different lengths: the solve over the index takes no more
    evaluations than torchdiffeq's dopri5 on the same field at the same tolerances (the
    series' ends, where the path's derivative drops to zero, are jump_t), and agrees with a
    tight solve at least as well."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    import neuralode

    series = _series_with_gaps(batch=32, n=20, ragged=True, seed=1)
    tol = dict(rtol=1e-5, atol=1e-6)
    model = NeuralCDE(3, 4, hidden=16, width=32, observed="none", eval_rtol=1e-5,
                      eval_atol=1e-6).double().eval()  # fmt: skip
    with torch.no_grad(), neuralode.record() as rec:
        ours = model(series)
    count = [0]

    def f(t, z):
        count[0] += 1
        return model.field(t, z)

    with torch.no_grad():
        path = model.path(series)
        model.field.path = path
        z0 = model.initial(path.evaluate(0.0))
        span = torch.tensor([0.0, 19.0], dtype=torch.float64)
        theirs = model.readout(torchdiffeq.odeint(f, z0, span, method="dopri5", **tol)[-1])
        tight = model.readout(torchdiffeq.odeint(f, z0, span, rtol=1e-11, atol=1e-12)[-1])
    assert rec.nfe_forward <= 1.2 * count[0], (rec.nfe_forward, count[0])
    err, err_theirs = (ours - tight).abs().max(), (theirs - tight).abs().max()
    assert err <= max(2 * err_theirs, 1e-6), (err, err_theirs)


def test_concat_pads_to_the_longest_and_refuses_mismatched_batches():
    gen = torch.Generator().manual_seed(0)
    a = drop_observations(make_spirals(5, n_obs=12, seed=1), 0.5, gen)
    b = make_spirals(3, n_obs=20, seed=2)
    both = concat([a, b])
    assert len(both) == 8 and both.times.shape[1] == 20
    assert torch.equal(both.labels, torch.cat((a.labels, b.labels)))
    back_a, back_b = both[torch.arange(5)], both[torch.arange(5, 8)]
    for got, want in ((back_a, a), (back_b, b)):
        for field in ("times", "values", "mask", "lengths"):
            assert torch.equal(getattr(got, field), getattr(want, field))
    # the padding repeats each series' last time, with nothing observed there
    k = int(a.lengths[0])
    assert torch.all(both.times[0, k:] == a.times[0, k - 1]) and not both.mask[0, k:].any()
    with pytest.raises(InvalidArgumentError, match="same channels"):
        concat([a, make_periodic(2, seed=0)])
    with pytest.raises(InvalidArgumentError, match="labelled and unlabelled"):
        concat([a, IrregularSeries(b.times, b.values, b.mask, b.lengths)])
