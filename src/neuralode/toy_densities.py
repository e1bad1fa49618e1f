"""FFJORD's 2-D toy distributions, generated (no download), each with its log-density — in
closed form, or by quadrature over the curve the data lies along — so that the entropy a
model's test NLL cannot beat is computable (:func:`entropy`).

The distributions are those of FFJORD's ``toy_data.py`` (which builds moons, circles and the
swiss roll on scikit-learn), re-implemented here: the same shapes, scales and noise. Where
scikit-learn places the points of moons and circles at evenly spaced angles, ours draws the
angles uniformly, which is the same distribution as the number of points grows. Checkerboard's
density is uniform on 8 squares (entropy ``log 32`` exactly); the others' entropy
``-∫ p log p`` is computed by the midpoint rule on a grid fine against the noise (the integrand
is smooth and decays fast, so the rule converges faster than any power of the spacing; the
same sum on a grid twice as coarse bounds its error), or, on request, by Monte Carlo. The
densities themselves are exact to rounding: Gauss-Legendre panels along curves with ends, the
midpoint rule around closed ones, and pinwheel's roots polished by Newton's method.
"""

from __future__ import annotations

import abc
import functools
import math
from collections.abc import Callable
from typing import ClassVar

import torch

from .errors import InvalidArgumentError

__all__ = ["TOY_DATASETS", "ToyDistribution", "entropy", "get_toy"]

_LOG_2PI = math.log(2 * math.pi)


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64)


class ToyDistribution(abc.ABC):
    """A 2-D distribution: ``sample(n, generator)`` (float32, shape ``(n, 2)``) and
    ``log_prob(x)`` (float64, shape ``(n,)``)."""

    name: ClassVar[str]
    description: ClassVar[str]
    bound: ClassVar[float] = 4.0  # the square [-bound, bound]² holds nearly all the mass
    # the entropy's quadrature: the square [-extent, extent]² (all the mass to 1e-12) and the
    # grid's spacing, a fraction of the noise's scale
    extent: ClassVar[float] = 6.0
    grid_step: ClassVar[float] = 0.05

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self._sample(n, generator).to(torch.float32)

    @abc.abstractmethod
    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        """float64 samples ``(n, 2)``."""

    @abc.abstractmethod
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The exact (or quadrature) log-density, float64."""

    def exact_entropy(self) -> float | None:
        """The entropy in closed form, where there is one."""
        return None


class _CurveMixture(ToyDistribution):
    """Points along curves plus isotropic Gaussian noise ``sigma``: the density is the
    Gaussian kernel averaged over the curve's parameter (a quadrature at ``nodes`` points
    per curve, weighted by the parameter's density: midpoints around a closed curve,
    Gauss-Legendre panels along one with ends)."""

    sigma: ClassVar[float]
    nodes: int = 1024

    @abc.abstractmethod
    def curve_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Quadrature nodes ``(M, 2)`` along all curves and their weights ``(M,)``
        (summing to 1)."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        nodes, weights = self.curve_points()
        return _log_kernel_mix(x.to(torch.float64), nodes, weights.log(), self.sigma)


def _log_kernel_mix(
    x: torch.Tensor, centres: torch.Tensor, log_w: torch.Tensor, sigma: float
) -> torch.Tensor:
    def chunk_log_prob(chunk: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(chunk, centres).pow(2)
        return torch.logsumexp(log_w - d2 / (2 * sigma**2), dim=1) - _LOG_2PI - 2 * math.log(sigma)

    return _by_chunks(x, len(centres), chunk_log_prob)


_CHUNK = 1 << 18
"""Elements of float64 (2 MB) in each temporary of a density's pass over a chunk of points."""


def _by_chunks(
    x: torch.Tensor, width: int, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``fn`` (points ``(n, 2)`` → log densities ``(n,)``, with temporaries of ``n × width``
    elements) over chunks of ``x`` that keep each temporary at ``_CHUNK`` elements, written
    into one output made first. Collecting the chunks' results in a list placed a small
    tensor after each chunk's large temporaries, which then could not be given back: one
    entropy of 2spirals or moons peaked at 0.6-1.1 GB of memory, varying from run to run
    (0.3 GB now, most of it PyTorch itself)."""
    out = torch.empty(len(x), dtype=torch.float64)
    rows = max(1, _CHUNK // width)
    for start in range(0, len(x), rows):
        out[start : start + rows] = fn(x[start : start + rows])
    return out


def _midpoints(lo: float, hi: float, m: int) -> torch.Tensor:
    return lo + (hi - lo) * (torch.arange(m, dtype=torch.float64) + 0.5) / m


_PANEL = 16  # Gauss-Legendre nodes per panel


def _gauss_legendre(lo: float, hi: float, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` nodes on ``[lo, hi]`` (rounded down to whole panels) and weights summing to 1:
    composite Gauss-Legendre, 16 nodes per panel. For a curve with ends (an arc, a spiral)
    the midpoint rule's error is O(h²) from the ends; this rule's is O(h³²) (the 2-D spirals'
    density: 5e-6 with 4,096 midpoints, 3e-15 with 1,024 of these nodes)."""
    import numpy as np

    x, w = np.polynomial.legendre.leggauss(_PANEL)
    panels = max(1, m // _PANEL)
    edges = torch.linspace(lo, hi, panels + 1, dtype=torch.float64)
    half, mid = (edges[1:] - edges[:-1])[:, None] / 2, (edges[1:] + edges[:-1])[:, None] / 2
    nodes = (mid + half * torch.from_numpy(x)).flatten()
    weights = (half * torch.from_numpy(w)).flatten() / (hi - lo)
    return nodes, weights


class EightGaussians(ToyDistribution):
    name = "8gaussians"
    description = "eight Gaussians (std 0.354) on a circle of radius 2.83"
    scale, std = 4.0 / 1.414, 0.5 / 1.414
    grid_step = 0.08

    def centres(self) -> torch.Tensor:
        s = 1 / math.sqrt(2)
        c = [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
        return torch.tensor(c, dtype=torch.float64) * self.scale

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        k = torch.randint(0, 8, (n,), generator=generator)
        return self.centres()[k] + self.std * _normal((n, 2), generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        log_w = torch.full((8,), -math.log(8), dtype=torch.float64)
        return _log_kernel_mix(x.to(torch.float64), self.centres(), log_w, self.std)


class Checkerboard(ToyDistribution):
    name = "checkerboard"
    description = "uniform on the 8 dark squares (side 2) of a 4×4 board on [-4, 4]²"

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        x1 = 4 * _uniform(n, generator) - 2
        k = torch.randint(0, 2, (n,), generator=generator, dtype=torch.float64)
        x2 = _uniform(n, generator) - 2 * k + torch.floor(x1) % 2
        return 2 * torch.stack([x1, x2], 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.floor(x.to(torch.float64) / 2)
        inside = (a >= -2).all(1) & (a <= 1).all(1) & ((a[:, 0] - a[:, 1]) % 2 == 0)
        return torch.where(inside, -math.log(32.0), -math.inf).to(torch.float64)

    def exact_entropy(self) -> float:
        return math.log(32.0)


class Moons(_CurveMixture):
    name = "moons"
    description = "two interleaved half circles, noise 0.2"
    sigma = 0.2
    grid_step = 0.06

    def _arcs(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        upper = torch.stack([theta.cos(), theta.sin()], 1)
        lower = torch.stack([1 - theta.cos(), 0.5 - theta.sin()], 1)
        shift = torch.tensor([-1.0, -0.2], dtype=torch.float64)
        return 2 * upper + shift, 2 * lower + shift

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        upper, lower = self._arcs(math.pi * _uniform(n, generator))
        which = torch.randint(0, 2, (n, 1), generator=generator).bool()
        return torch.where(which, upper, lower) + self.sigma * _normal((n, 2), generator)

    def curve_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        theta, w = _gauss_legendre(0, math.pi, self.nodes)
        upper, lower = self._arcs(theta)
        return torch.cat([upper, lower]), torch.cat([w, w]) / 2


class Circles(_CurveMixture):
    name = "circles"
    description = "two concentric circles of radii 3 and 1.5, noise 0.24"
    sigma = 0.24
    grid_step = 0.06
    radii: tuple[float, ...] = (3.0, 1.5)
    # closed curves: the midpoint rule converges like exp(-2π² σ² / h²) in the spacing h,
    # beyond rounding at 512 nodes on these radii and noises (rings: h = 0.037, σ = 0.08)
    nodes = 512

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        theta = 2 * math.pi * _uniform(n, generator)
        k = torch.randint(0, len(self.radii), (n,), generator=generator)
        r = torch.tensor(self.radii, dtype=torch.float64)[k]
        pts = torch.stack([r * theta.cos(), r * theta.sin()], 1)
        return pts + self.sigma * _normal((n, 2), generator)

    def curve_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        theta = _midpoints(0, 2 * math.pi, self.nodes)
        pts = torch.cat([torch.stack([r * theta.cos(), r * theta.sin()], 1) for r in self.radii])
        return pts, torch.full((len(pts),), 1 / len(pts), dtype=torch.float64)


class Rings(Circles):
    name = "rings"
    description = "four concentric circles of radii 3, 2.25, 1.5 and 0.75, noise 0.08"
    sigma = 0.08
    radii = (3.0, 2.25, 1.5, 0.75)
    extent, grid_step = 4.5, 0.025


class SwissRoll(_CurveMixture):
    name = "swissroll"
    description = "the swiss roll (t cos t, t sin t)/5, t in [1.5π, 4.5π], noise 0.2"
    sigma = 0.2
    nodes = 1024  # not periodic: Gauss-Legendre panels (the midpoint rule needed 4,096)
    grid_step = 0.06

    @staticmethod
    def _roll(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([t * t.cos(), t * t.sin()], 1) / 5

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        t = 1.5 * math.pi * (1 + 2 * _uniform(n, generator))
        return self._roll(t) + self.sigma * _normal((n, 2), generator)

    def curve_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        t, w = _gauss_legendre(1.5 * math.pi, 4.5 * math.pi, self.nodes)
        return self._roll(t), w


class TwoSpirals(ToyDistribution):
    name = "2spirals"
    description = "two interleaved spiral arms, noise 0.1 plus a uniform jitter of 1/6"
    sigma, jitter, turns = 0.1, 0.5 / 3, 3 * math.pi
    nodes = 1024  # Gauss-Legendre panels along the arm (see _gauss_legendre)
    extent, grid_step = 4.5, 0.04

    def _arm(self, s: torch.Tensor) -> torch.Tensor:
        return torch.stack([-s.cos() * s, s.sin() * s], 1) / 3

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        s = _uniform(n, generator).sqrt() * self.turns
        arm = self._arm(s) + self.jitter * torch.rand(
            (n, 2), generator=generator, dtype=torch.float64
        )
        sign = 1 - 2 * torch.randint(0, 2, (n, 1), generator=generator, dtype=torch.float64)
        return sign * arm + self.sigma * _normal((n, 2), generator)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        # the arm parameter has density 2s / turns² on [0, turns]; the noise around a point
        # of the arm is (uniform [0, jitter] + N(0, σ²)) per coordinate, mirrored on arm two
        s, w = _gauss_legendre(0, self.turns, self.nodes)
        log_w = torch.log(2 * s / self.turns * w)  # the density 2s / turns² times turns · w
        centres = self._arm(s)

        def chunk_log_prob(chunk: torch.Tensor) -> torch.Tensor:
            terms = []
            for sign in (1.0, -1.0):
                v = sign * chunk[:, None, :] - centres[None]  # (n, M, 2), in the arm's frame
                dens = torch.special.ndtr(v / self.sigma) - torch.special.ndtr(
                    (v - self.jitter) / self.sigma
                )
                dens = dens / self.jitter
                terms.append(torch.logsumexp(log_w + dens.clamp_min(1e-300).log().sum(2), 1))
            return torch.logsumexp(torch.stack(terms), 0) - math.log(2)

        return _by_chunks(x.to(torch.float64), 2 * len(s), chunk_log_prob)


class Pinwheel(ToyDistribution):
    name = "pinwheel"
    description = "five curved arms: Gaussians bent by an angle growing with the radius"
    arms, radial, tangential, rate = 5, 0.3, 0.1, 0.25
    nodes = 2048  # the grid on which the roots are bracketed
    extent, grid_step = 6.0, 0.05  # (at 5.0 the radial tail beyond it held 3e-7 of the mass)

    def _sample(self, n: int, generator: torch.Generator | None) -> torch.Tensor:
        k = torch.randint(0, self.arms, (n,), generator=generator).to(torch.float64)
        f = _normal((n, 2), generator) * torch.tensor([self.radial, self.tangential])
        f[:, 0] += 1
        angle = 2 * math.pi * k / self.arms + self.rate * f[:, 0].exp()
        c, s = angle.cos(), angle.sin()
        # FFJORD's einsum("ti,tij->tj", f, [[c, -s], [s, c]]): a rotation by -angle
        return 2 * torch.stack([f[:, 0] * c + f[:, 1] * s, -f[:, 0] * s + f[:, 1] * c], 1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        # in polar coordinates the map f = ρ(cos ψ, sin ψ) -> y/2 = ρ(cos φ, sin φ) keeps ρ and
        # sets φ = ψ - angle(ρ cos ψ); p(y) sums p_f / (4 |dφ/dψ|) over the roots ψ of φ(ψ),
        # bracketed on a grid of ψ and polished by Newton's method (exact to rounding)
        x = x.to(torch.float64)
        psi = _midpoints(-math.pi, math.pi, self.nodes)

        def chunk_log_prob(chunk: torch.Tensor) -> torch.Tensor:
            rho = chunk.norm(dim=1, keepdim=True) / 2
            phi = torch.atan2(chunk[:, 1], chunk[:, 0])[:, None]
            bend = self.rate * (rho * psi.cos()).exp()  # (n, M)
            total = torch.zeros(len(chunk), dtype=torch.float64)
            for k in range(self.arms):
                offset = 2 * math.pi * k / self.arms
                g = torch.remainder(psi - offset - bend - phi + math.pi, 2 * math.pi) - math.pi
                a, b = g[:, :-1], g[:, 1:]
                rows, cols = ((a * b <= 0) & ((a - b).abs() < math.pi)).nonzero(as_tuple=True)
                ra, rb = a[rows, cols], b[rows, cols]
                frac = (ra / (ra - rb)).nan_to_num(0.0)
                lo, hi = psi[cols], psi[cols + 1]
                root = torch.lerp(lo, hi, frac)
                r, ph = rho[rows, 0], phi[rows, 0]
                for _ in range(3):  # Newton on φ(ψ) - φ from the secant root, in the bracket
                    e = self.rate * (r * root.cos()).exp()
                    miss = torch.remainder(root - offset - e - ph + math.pi, 2 * math.pi) - math.pi
                    root = torch.clamp(root - miss / (1 + e * r * root.sin()), lo, hi)
                f0, f1 = r * root.cos(), r * root.sin()
                log_pf = (
                    -0.5 * ((f0 - 1) / self.radial) ** 2
                    - 0.5 * (f1 / self.tangential) ** 2
                    - _LOG_2PI
                    - math.log(self.radial * self.tangential)
                )
                slope = (1 + self.rate * f0.exp() * f1).abs()
                total.index_add_(0, rows, log_pf.exp() / (4 * slope))
            return (total / self.arms).clamp_min(1e-300).log()

        return _by_chunks(x, self.nodes, chunk_log_prob)


TOY_DATASETS: dict[str, type[ToyDistribution]] = {
    cls.name: cls
    for cls in (
        EightGaussians, Pinwheel, Checkerboard, TwoSpirals, Moons, Circles, SwissRoll, Rings
    )
}  # fmt: skip


def get_toy(name: str) -> ToyDistribution:
    """The 2-D toy distribution of this name (one of :data:`TOY_DATASETS`)."""
    try:
        return TOY_DATASETS[name]()
    except KeyError:
        raise InvalidArgumentError(
            f"unknown 2-D dataset {name!r}; choose from: {', '.join(TOY_DATASETS)}"
        ) from None


def _grid_entropy(dist: ToyDistribution, step: float) -> tuple[float, float]:
    """``(-∫ p log p, ∫ p)`` by the midpoint rule on ``[-extent, extent]²`` at this spacing."""
    m = max(2, round(2 * dist.extent / step))
    h = 2 * dist.extent / m
    axis = -dist.extent + h * (torch.arange(m, dtype=torch.float64) + 0.5)
    pts = torch.cartesian_prod(axis, axis)
    ent = mass = 0.0
    for chunk in pts.split(65_536):
        lp = dist.log_prob(chunk)
        p = lp.exp()
        ent -= float((p * lp).where(p > 0, 0.0).sum())
        mass += float(p.sum())
    return ent * h * h, mass * h * h


@functools.cache
def entropy(name: str, samples: int | None = None, seed: int = 12345) -> tuple[float, float]:
    """``(H, error)`` in nats. Exact where known (error 0); else by quadrature on a grid (the
    error is the difference from the same rule on a grid twice as coarse, an upper bound, plus
    what the density's total mass on the grid differs from 1 moves it);
    with ``samples``, by Monte Carlo instead: ``-mean log p(x)`` over fresh samples, the error
    its standard error."""
    dist = get_toy(name)
    exact = dist.exact_entropy()
    if exact is not None:
        return exact, 0.0
    if samples is None:
        fine, mass = _grid_entropy(dist, dist.grid_step)
        coarse, _ = _grid_entropy(dist, 2 * dist.grid_step)
        # a density whose quadrature misses mass ε moves the entropy by about ε (1 + |H|)
        return fine, abs(fine - coarse) + abs(1.0 - mass) * (1.0 + abs(fine))
    x = dist._sample(samples, torch.Generator().manual_seed(seed))
    lp = dist.log_prob(x)
    return float(-lp.mean()), float(lp.std() / math.sqrt(samples))
