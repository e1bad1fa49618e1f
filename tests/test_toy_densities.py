"""The 2-D toy distributions: each log-density integrates to 1, agrees with its own sampler
(a chi-square test on coarse cells), and the entropies agree with closed forms."""

import math

import pytest
import torch

from neuralode.errors import InvalidArgumentError
from neuralode.toy_densities import TOY_DATASETS, ToyDistribution, _grid_entropy, entropy, get_toy

L, FINE, COARSE = 6.0, 120, 12  # the grid, and the coarse cells of the chi-square test


def _grid():
    edges = torch.linspace(-L, L, FINE + 1, dtype=torch.float64)
    c = (edges[:-1] + edges[1:]) / 2
    X, Y = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([X.flatten(), Y.flatten()], 1), float(edges[1] - edges[0]) ** 2


@pytest.mark.parametrize("name", list(TOY_DATASETS))
def test_density_integrates_to_one_and_matches_the_sampler(name):
    dist = get_toy(name)
    pts, cell = _grid()
    p = dist.log_prob(pts).exp()
    assert abs(float(p.sum()) * cell - 1) < 2e-3
    # the probability of each coarse cell, from the density, against sample counts
    n = 40_000
    s = dist.sample(n, torch.Generator().manual_seed(0)).to(torch.float64)
    assert s.dtype == torch.float64 and s.shape == (n, 2)
    k = FINE // COARSE
    prob = p.reshape(COARSE, k, COARSE, k).sum((1, 3)).flatten() * cell
    edges = torch.linspace(-L, L, COARSE + 1, dtype=torch.float64)
    counts = torch.histogramdd(s, bins=[edges, edges]).hist.flatten()
    used = prob * n > 20
    expected = prob[used] * n
    chi2 = float(((counts[used] - expected) ** 2 / expected).sum())
    dof = int(used.sum()) - 1
    assert chi2 < dof + 6 * math.sqrt(2 * dof), (chi2, dof)  # ~4σ of the chi-square


class _Gaussian(ToyDistribution):
    """A test distribution with a closed-form entropy, log(2πe σ²), for the quadrature."""

    name, description, sigma, extent = "gaussian", "N(0, 0.3² I)", 0.3, 4.0

    def _sample(self, n, generator):
        return self.sigma * torch.randn((n, 2), generator=generator, dtype=torch.float64)

    def log_prob(self, x):
        return -(x * x).sum(1) / (2 * self.sigma**2) - math.log(2 * math.pi * self.sigma**2)


def test_the_entropy_quadrature_is_exact_on_a_gaussian():
    h, mass = _grid_entropy(_Gaussian(), 0.1)
    assert mass == pytest.approx(1.0, abs=1e-12)
    assert h == pytest.approx(math.log(2 * math.pi * math.e * 0.3**2), abs=1e-10)


def test_entropies_against_closed_forms():
    assert entropy("checkerboard") == (math.log(32), 0.0)
    # eight Gaussians: at most log 8 + the entropy of one, log(2πe σ²) (their overlap lowers it)
    sigma = 0.5 / 1.414
    h, err = entropy("8gaussians")
    assert err < 1e-4
    assert 0 < math.log(8) + math.log(2 * math.pi * math.e * sigma**2) - h < 0.01
    # circles: a thin ring of radius r has entropy ≈ log(2πr) + ½ log(2πe σ²) per ring
    dist = get_toy("rings")
    h, err = entropy("rings", 20_000)  # (its quadrature: a slow test below)
    rings = [math.log(2 * math.pi * r) for r in dist.radii]
    approx = math.log(4) + sum(rings) / 4 + 0.5 * math.log(2 * math.pi * math.e * dist.sigma**2)
    assert abs(h - approx) < 0.02


def _quadrature_against_monte_carlo(name):
    h, err = entropy(name)
    assert err < 1e-4, (name, err)  # the goal: every entropy to 1e-4
    mc, se = entropy(name, 100_000)
    assert abs(h - mc) < 4 * se, (name, h, mc, se)


@pytest.mark.parametrize("name", ["8gaussians", "moons", "circles"])
def test_quadrature_entropies_agree_with_monte_carlo(name):
    _quadrature_against_monte_carlo(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["swissroll", "rings", "pinwheel", "2spirals"])
def test_quadrature_entropies_agree_with_monte_carlo_slow(name):
    """(Up to 30 CPU seconds each: their densities are themselves quadratures over many
    nodes.)"""
    _quadrature_against_monte_carlo(name)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(InvalidArgumentError, match="choose from: 8gaussians"):
        get_toy("3gaussians")
