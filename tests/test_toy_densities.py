"""The 2-D toy distributions: each log-density integrates to 1, agrees with its own sampler
(a chi-square test on coarse cells), and the entropies agree with closed forms."""

import itertools
import math
import subprocess
import sys

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
    """(Up to 12 CPU seconds each: their Monte Carlo estimates take many samples of densities
    that are themselves quadratures over many nodes.)"""
    _quadrature_against_monte_carlo(name)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(InvalidArgumentError, match="choose from: 8gaussians"):
        get_toy("3gaussians")


def _adaptive_density(name, x):
    """The curve mixtures' density at one point by scipy's adaptive quadrature over the
    curve's parameter, written out from each distribution's sampler."""
    from scipy.integrate import quad
    from scipy.stats import norm

    def gauss(cx, cy, s):
        return math.exp(-((x[0] - cx) ** 2 + (x[1] - cy) ** 2) / (2 * s * s)) / (
            2 * math.pi * s * s
        )

    def integral(fn, lo, hi):
        return quad(fn, lo, hi, epsabs=1e-15, epsrel=1e-12, limit=2000)[0]

    if name == "moons":  # two half circles, the angle uniform on [0, π]
        up = integral(lambda a: gauss(2 * math.cos(a) - 1, 2 * math.sin(a) - 0.2, 0.2), 0, math.pi)
        low = integral(lambda a: gauss(1 - 2 * math.cos(a), 0.8 - 2 * math.sin(a), 0.2), 0, math.pi)
        return (up + low) / (2 * math.pi)
    if name == "swissroll":  # (t cos t, t sin t) / 5, t uniform on [1.5π, 4.5π]
        lo, hi = 1.5 * math.pi, 4.5 * math.pi
        return integral(lambda t: gauss(t * math.cos(t) / 5, t * math.sin(t) / 5, 0.2), lo, hi) / (
            hi - lo
        )
    # 2spirals: s = √u · 3π (density 2s / (3π)²), the arm (-s cos s, s sin s) / 3 plus a
    # uniform [0, 1/6] and N(0, 0.1²) per coordinate, mirrored with probability 1/2
    turns, jit, sig = 3 * math.pi, 0.5 / 3, 0.1

    def coord(v):  # the density of uniform [0, jit] + N(0, sig²) at v
        return (norm.cdf(v / sig) - norm.cdf((v - jit) / sig)) / jit

    total = 0.0
    for sign in (1.0, -1.0):

        def f(s, sign=sign):
            ax, ay = -math.cos(s) * s / 3, math.sin(s) * s / 3
            return 2 * s / turns**2 * coord(sign * x[0] - ax) * coord(sign * x[1] - ay)

        total += integral(f, 0, turns)
    return total / 2


@pytest.mark.parametrize("name", ["moons", "swissroll", "2spirals"])
def test_curve_densities_match_adaptive_quadrature(name):
    """Near the curves' ends too (where a midpoint rule's error was largest): the density by
    the distribution's own quadrature against scipy's adaptive one, to 1e-10 relative."""
    pytest.importorskip("scipy")
    ends = {
        "moons": [(1.0, -0.2), (-3.0, -0.2), (3.0, 0.3), (0.0, 1.5)],
        "swissroll": [(0.0, -0.94), (0.1, 2.83), (-1.9, 0.1), (-1.0, -1.5)],
        "2spirals": [(3.14, 0.0), (-3.2, 0.1), (0.05, 0.05), (1.0, -2.0)],
    }[name]
    x = torch.tensor(ends, dtype=torch.float64)
    ours = get_toy(name).log_prob(x).exp()
    want = torch.tensor([_adaptive_density(name, p) for p in ends], dtype=torch.float64)
    assert float(want.min()) > 1e-3  # points where the density is not negligible
    torch.testing.assert_close(ours, want, rtol=1e-10, atol=0)


def test_pinwheel_density_is_the_change_of_variables_at_every_preimage():
    """Pinwheel's density at a point, computed another way: every preimage f of y under the
    sampler's map y = 2 R(-angle(f)) f (one arm at a time, found by scipy's brentq on a fine
    scan of the angle), p(y) = Σ p_f(f) / |det ∂y/∂f| with the Jacobian by autograd."""
    pytest.importorskip("scipy")
    from scipy.optimize import brentq

    dist = get_toy("pinwheel")
    rad, tan, rate = dist.radial, dist.tangential, dist.rate

    def forward(f, k):  # the sampler's map, for one arm
        angle = 2 * math.pi * k / dist.arms + rate * f[0].exp()
        c, s = angle.cos(), angle.sin()
        return 2 * torch.stack([f[0] * c + f[1] * s, -f[0] * s + f[1] * c])

    grid = [-math.pi + 2 * math.pi * i / 20_000 for i in range(20_001)]  # the angle's scan

    def density(y):
        rho, phi = math.hypot(*y) / 2, math.atan2(y[1], y[0])
        total = 0.0
        for k in range(dist.arms):

            def miss(psi, k=k):
                a = psi - 2 * math.pi * k / dist.arms - rate * math.exp(rho * math.cos(psi)) - phi
                return math.remainder(a, 2 * math.pi)

            values = [miss(p) for p in grid]
            for (lo, a), (hi, b) in itertools.pairwise(zip(grid, values, strict=True)):
                if a * b < 0 and abs(a - b) < math.pi:
                    psi = brentq(miss, lo, hi, xtol=1e-15)
                    f = torch.tensor(
                        [rho * math.cos(psi), rho * math.sin(psi)], dtype=torch.float64
                    )
                    jac = torch.autograd.functional.jacobian(lambda g, k=k: forward(g, k), f)
                    assert torch.allclose(forward(f, k), torch.tensor(y, dtype=torch.float64))
                    log_pf = -0.5 * (((f[0] - 1) / rad) ** 2 + (f[1] / tan) ** 2)
                    pf = float(log_pf.exp()) / (2 * math.pi * rad * tan)
                    total += pf / abs(float(torch.linalg.det(jac)))
        return total / dist.arms

    points = [*dist.sample(4, torch.Generator().manual_seed(3)).double().tolist(), [0.3, -0.2]]
    want = torch.tensor([density(p) for p in points], dtype=torch.float64)
    assert float(want.min()) > 1e-3
    ours = dist.log_prob(torch.tensor(points, dtype=torch.float64)).exp()
    torch.testing.assert_close(ours, want, rtol=1e-10, atol=0)


_PEAK_SCRIPT = """
import resource, torch
torch.set_num_threads(1)
from neuralode.toy_densities import get_toy
x = torch.randn(16_384, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
dists = [get_toy(name) for name in ("moons", "rings", "2spirals")]
for dist in dists:
    dist.log_prob(x[:64])  # PyTorch's own first-use allocations
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for dist, n in zip(dists, (16_384, 16_384, 4_096)):
    dist.log_prob(x[:n])
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in kB (Linux)")
def test_a_density_over_many_points_keeps_its_memory_bounded():
    """The densities run over chunks of points whose temporaries are about 2 MB each: with
    chunks of 1,024 points against 1,024 nodes the temporaries were 16 MB, their results were
    collected in a list whose small tensors the allocator placed after them, and the peak
    grew by 90-300 MB here (one entropy of 2spirals or moons peaked at 0.6-1.1 GB, varying
    from run to run; 0.3 GB now, most of it PyTorch itself)."""
    run = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True
    )
    growth_mb = float(run.stdout.split()[-1])
    assert growth_mb < 50, f"the peak grew by {growth_mb:.0f} MB"
