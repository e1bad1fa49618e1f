"""Continuous paths through a batch of observed series, for neural CDEs: the natural cubic
spline (Kidger et al., 2020, §3.2) and linear interpolation.

Every series has its own knots: ``t`` of shape ``(n,)`` (shared) or ``(batch, n)``, values of
shape ``(batch, n, channels)``, and optionally ``lengths``: series ``b`` uses its first
``lengths[b]`` knots; the rest are padding and are ignored. A path is constant beyond its last
knot and before its first (its derivative there is zero), so that a solve over the longest
series leaves a shorter series' state unchanged after its end.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidArgumentError

__all__ = ["LinearInterpolation", "NaturalCubicSpline"]


class _Path:
    """Knots and values checked and broadcast; segment lookup shared by both paths."""

    def __init__(self, t: torch.Tensor, x: torch.Tensor, lengths: torch.Tensor | None) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            raise InvalidArgumentError(
                f"x must be a tensor of shape (batch, n, channels), got "
                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
            )
        batch, n, _ = x.shape
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.ndim == 1:
            t = t.expand(batch, -1)
        if t.shape != (batch, n):
            raise InvalidArgumentError(
                f"t must have shape (n,) or (batch, n) = ({batch}, {n}), got {tuple(t.shape)}"
            )
        if n < 2:
            raise InvalidArgumentError(f"a path needs at least 2 knots, got {n}")
        if lengths is None:
            lengths = torch.full((batch,), n, dtype=torch.long, device=x.device)
        lengths = torch.as_tensor(lengths, device=x.device).long()
        if lengths.shape != (batch,) or bool((lengths < 2).any()) or bool((lengths > n).any()):
            raise InvalidArgumentError(
                f"lengths must hold one length in 2..{n} per series (shape ({batch},)), got "
                f"{lengths.tolist() if lengths.ndim <= 1 else tuple(lengths.shape)}"
            )
        steps = t.diff(dim=1)
        valid = torch.arange(n - 1, device=x.device) < (lengths - 1).unsqueeze(1)
        if not bool((steps[valid] > 0).all()) or not bool(torch.isfinite(t).all()):
            raise InvalidArgumentError(
                "every series' knots must be finite and strictly increasing over its length"
            )
        if not bool(torch.isfinite(x).all()):
            raise InvalidArgumentError(
                "x holds NaN or infinite values: fill missing observations first (e.g. "
                "carry the last one forward) and pass the mask as channels"
            )
        self.t, self.x, self.lengths, self.valid = t.contiguous(), x, lengths, valid
        self.h = torch.where(valid, steps, torch.ones_like(steps))  # (batch, n - 1)
        rows = torch.arange(batch, device=x.device)
        self.t_first = t[:, 0]
        self.t_last = t[rows, lengths - 1]
        self.x_last = x[rows, lengths - 1]

    def knots(self) -> torch.Tensor:
        """The knots, as ``(batch, n)`` (for ``jump_t`` where they are shared)."""
        return self.t

    def _locate(self, t: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(segment, offset, inside)`` per series for the time ``t`` (a number, or one
        per series)."""
        batch = self.t.shape[0]
        t = torch.as_tensor(t, dtype=self.t.dtype, device=self.t.device)
        t = t.expand(batch) if t.ndim == 0 else t.reshape(batch)
        inside = (t >= self.t_first) & (t <= self.t_last)
        tc = torch.minimum(torch.maximum(t, self.t_first), self.t_last)
        seg = torch.searchsorted(self.t, tc.unsqueeze(1), right=True).squeeze(1) - 1
        seg = torch.minimum(seg.clamp(min=0), self.lengths - 2)
        offset = tc - self.t.gather(1, seg.unsqueeze(1)).squeeze(1)
        return seg, offset, inside


class NaturalCubicSpline(_Path):
    """The natural cubic spline through every series' knots (second derivative zero at both
    ends), per channel: :meth:`evaluate` and :meth:`derivative` at a time.

    Its coefficients come from the tridiagonal system of the second derivatives, solved by the
    Thomas algorithm along the knots for all series and channels at once; they are
    differentiable with respect to ``x``.
    """

    def __init__(self, t: Any, x: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        super().__init__(t, x, lengths)
        x, h, n = self.x, self.h, self.x.shape[1]
        slope = (x[:, 1:] - x[:, :-1]) / h.unsqueeze(-1)  # (batch, n - 1, channels)
        # rows 1 .. len-2: h[i-1] M[i-1] + 2 (h[i-1] + h[i]) M[i] + h[i] M[i+1] = 6 (s[i] - s[i-1]);
        # the ends and the padding: M = 0
        interior = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        interior[:, 1:-1] = self.valid[:, 1:]
        zero = torch.zeros_like(h[:, :1])
        sub = torch.where(interior, torch.cat((zero, h), 1), 0.0)
        sup = torch.where(interior, torch.cat((h, zero), 1), 0.0)
        diag = torch.where(interior, 2 * (torch.cat((zero, h), 1) + torch.cat((h, zero), 1)), 1.0)
        zc = torch.zeros_like(slope[:, :1])
        rhs = torch.where(
            interior.unsqueeze(-1), 6 * (torch.cat((slope, zc), 1) - torch.cat((zc, slope), 1)), 0.0
        )
        # Thomas algorithm (the system is diagonally dominant: no pivoting needed)
        c_prime, d_prime = [sup[:, 0] / diag[:, 0]], [rhs[:, 0] / diag[:, :1]]
        for i in range(1, n):
            denom = diag[:, i] - sub[:, i] * c_prime[-1]
            c_prime.append(sup[:, i] / denom)
            d_prime.append((rhs[:, i] - sub[:, i, None] * d_prime[-1]) / denom.unsqueeze(-1))
        m = [d_prime[-1]]
        for i in range(n - 2, -1, -1):
            m.append(d_prime[i] - c_prime[i].unsqueeze(-1) * m[-1])
        second = torch.stack(m[::-1], dim=1)  # (batch, n, channels)
        hh = h.unsqueeze(-1)
        self.a = x[:, :-1]
        self.b = slope - hh * (2 * second[:, :-1] + second[:, 1:]) / 6
        self.c = second[:, :-1] / 2
        self.d = (second[:, 1:] - second[:, :-1]) / (6 * hh)

    def _coefficients(self, t: Any) -> tuple[torch.Tensor, ...]:
        seg, s, inside = self._locate(t)
        idx = seg.reshape(-1, 1, 1).expand(-1, 1, self.a.shape[-1])
        a, b, c, d = (z.gather(1, idx).squeeze(1) for z in (self.a, self.b, self.c, self.d))
        return a, b, c, d, s.unsqueeze(-1), inside.unsqueeze(-1)

    def evaluate(self, t: Any) -> torch.Tensor:
        """The path at ``t``: shape ``(batch, channels)``."""
        a, b, c, d, s, _ = self._coefficients(t)
        return a + s * (b + s * (c + s * d))

    def derivative(self, t: Any) -> torch.Tensor:
        """``dX/dt`` at ``t`` (zero outside a series' knots): shape ``(batch, channels)``."""
        _, b, c, d, s, inside = self._coefficients(t)
        return torch.where(inside, b + s * (2 * c + 3 * s * d), 0.0)


class LinearInterpolation(_Path):
    """The piecewise-linear path through every series' knots. Its derivative jumps at the
    knots: give them to the solver as ``jump_t`` (or use a fixed-step method on them)."""

    def __init__(self, t: Any, x: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        super().__init__(t, x, lengths)
        self.slope = (self.x[:, 1:] - self.x[:, :-1]) / self.h.unsqueeze(-1)

    def evaluate(self, t: Any) -> torch.Tensor:
        seg, s, _ = self._locate(t)
        idx = seg.reshape(-1, 1, 1).expand(-1, 1, self.x.shape[-1])
        return self.x.gather(1, idx).squeeze(1) + s.unsqueeze(-1) * self.slope.gather(
            1, idx
        ).squeeze(1)

    def derivative(self, t: Any) -> torch.Tensor:
        """The slope of the segment holding ``t`` (at a knot: the segment that starts there)."""
        seg, _, inside = self._locate(t)
        idx = seg.reshape(-1, 1, 1).expand(-1, 1, self.x.shape[-1])
        return torch.where(inside.unsqueeze(-1), self.slope.gather(1, idx).squeeze(1), 0.0)
