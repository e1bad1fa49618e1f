"""Butcher tableaux of the native explicit Runge–Kutta methods.

A method is a validated, immutable tableau plus an order. The tableau checks its own consistency
on creation (weights sum to one, row sums equal the nodes, error weights sum to zero) and knows
whether it is FSAL (its last stage is ``f(t1, y1)``, reusable as the next step's first stage).
"""

from __future__ import annotations

import dataclasses
import math

from ..errors import InvalidArgumentError

__all__ = [
    "ADAPTIVE",
    "FIXED",
    "QUARTIC",
    "TABLEAUX",
    "ButcherTableau",
    "flatten_terms",
    "nonzero_terms",
]

_TOL = 1e-12

# Dense output: the quartic through y0, y_mid, y1 with slopes f0, f1 on theta in [0, 1]. The
# weights of y0, y1, y_mid, dt*f0 and dt*f1 are polynomials in theta; their coefficients of
# theta^0 ... theta^4.
QUARTIC: dict[str, tuple[float, float, float, float, float]] = {
    "y0": (1.0, 0.0, -11.0, 18.0, -8.0),
    "y1": (0.0, 0.0, -5.0, 14.0, -8.0),
    "mid": (0.0, 0.0, 16.0, -32.0, 16.0),
    "f0": (0.0, 1.0, -4.0, 5.0, -2.0),
    "f1": (0.0, 0.0, 1.0, -3.0, 2.0),
}


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method.

    Attributes:
        name: the method's name (torchdiffeq's name where it has one).
        order: order of the propagated solution.
        c: nodes, one per stage (``c[0] == 0``).
        a: the strictly lower triangular coefficient rows; row ``i`` has ``i`` entries.
        b: weights of the propagated solution.
        b_err: weights of the error estimate (``b - b_hat``), or ``None`` for a fixed-step method.
        c_mid: weights of the solution at the step's midpoint (``y0 + dt * sum(c_mid * k)``),
            used with ``y0, y1, f0, f1`` for 4th-order dense output; ``None`` where the method has
            no continuous extension.
        last_stage_as_f1: take the last stage (at ``c == 1``) as the slope at the step's end,
            for the next step's first stage and the dense output, although it is not evaluated
            at ``y1``. torchdiffeq does this for every method; for an FSAL method it is exact,
            and ``adaptive_heun`` and ``fehlberg2`` are defined with it so that they take
            torchdiffeq's steps with torchdiffeq's number of evaluations.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_err: tuple[float, ...] | None = None
    c_mid: tuple[float, ...] | None = None
    last_stage_as_f1: bool = False
    # derived: the non-zero coefficients as (stage index, coefficient) pairs
    a_terms: tuple[tuple[tuple[int, float], ...], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    b_terms: tuple[tuple[int, float], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    b_err_terms: tuple[tuple[int, float], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    # the same pairs flattened, (j0, c0, j1, c1, ...): the form the fused kernels take
    a_flat: tuple[tuple[int | float, ...], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    # the rows and nodes of the stages after the first (what a step evaluates)
    a_flat_stages: tuple[tuple[int | float, ...], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    c_stages: tuple[float, ...] = dataclasses.field(init=False, repr=False, compare=False)
    b_flat: tuple[int | float, ...] = dataclasses.field(init=False, repr=False, compare=False)
    b_err_flat: tuple[int | float, ...] = dataclasses.field(init=False, repr=False, compare=False)
    # dense output as y0 + dt * sum_j q_j(theta) * k_j, k_stages = f(t1, y1): (j, coefficients of
    # theta, theta^2, theta^3, theta^4 in q_j) for every j whose q_j is not zero
    dense_poly: tuple[tuple[int, tuple[float, float, float, float]], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    # derived flags, plain attributes (read on every step: no property code runs)
    stages: int = dataclasses.field(init=False, repr=False, compare=False)
    adaptive: bool = dataclasses.field(init=False, repr=False, compare=False)
    fsal: bool = dataclasses.field(init=False, repr=False, compare=False)
    """The last stage evaluates ``f(t0 + dt, y1)``: reusable as the next first stage."""
    reuses_last_stage: bool = dataclasses.field(init=False, repr=False, compare=False)
    """Whether the last stage serves as the next step's first (FSAL, or
    ``last_stage_as_f1``)."""

    def __post_init__(self) -> None:
        s = len(self.c)
        if s < 1 or len(self.a) != s or len(self.b) != s:
            raise InvalidArgumentError(f"{self.name}: c, a and b must all have one entry per stage")
        if self.c[0] != 0.0:
            raise InvalidArgumentError(f"{self.name}: the first node must be 0")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise InvalidArgumentError(f"{self.name}: row {i} of a must have {i} entries")
            if abs(math.fsum(row) - self.c[i]) > _TOL:
                raise InvalidArgumentError(
                    f"{self.name}: row {i} of a sums to {math.fsum(row)}, not c={self.c[i]}"
                )
        if abs(math.fsum(self.b) - 1.0) > _TOL:
            raise InvalidArgumentError(
                f"{self.name}: the weights b sum to {math.fsum(self.b)}, not 1"
            )
        if self.b_err is not None:
            if len(self.b_err) != s:
                raise InvalidArgumentError(f"{self.name}: b_err must have one entry per stage")
            if abs(math.fsum(self.b_err)) > _TOL:
                raise InvalidArgumentError(
                    f"{self.name}: error weights sum to {math.fsum(self.b_err)}, not 0"
                )
        if self.c_mid is not None:
            if len(self.c_mid) != s:
                raise InvalidArgumentError(f"{self.name}: c_mid must have one entry per stage")
            if abs(math.fsum(self.c_mid) - 0.5) > 1e-9:
                raise InvalidArgumentError(
                    f"{self.name}: midpoint weights sum to {math.fsum(self.c_mid)}, not 1/2"
                )
        if self.order < 1:
            raise InvalidArgumentError(f"{self.name}: order must be positive")
        if self.last_stage_as_f1 and self.c[-1] != 1.0:
            raise InvalidArgumentError(
                f"{self.name}: last_stage_as_f1 needs a last stage at c == 1"
            )
        object.__setattr__(self, "stages", s)
        object.__setattr__(self, "adaptive", self.b_err is not None)
        object.__setattr__(self, "fsal", self._is_fsal())
        object.__setattr__(self, "reuses_last_stage", self.fsal or self.last_stage_as_f1)
        object.__setattr__(self, "a_terms", tuple(nonzero_terms(row) for row in self.a))
        object.__setattr__(self, "b_terms", nonzero_terms(self.b))
        object.__setattr__(self, "b_err_terms", nonzero_terms(self.b_err or ()))
        object.__setattr__(self, "a_flat", tuple(flatten_terms(t) for t in self.a_terms))
        object.__setattr__(self, "a_flat_stages", self.a_flat[1:])
        object.__setattr__(self, "c_stages", tuple(self.c[1:]))
        object.__setattr__(self, "b_flat", flatten_terms(self.b_terms))
        object.__setattr__(self, "b_err_flat", flatten_terms(self.b_err_terms))
        object.__setattr__(self, "dense_poly", self._dense_poly())

    def _dense_poly(self) -> tuple[tuple[int, tuple[float, float, float, float]], ...]:
        """The quartic through y0, y_mid, y1 with slopes f0, f1 (``Kernels.dense``) with
        y1 = y0 + dt * sum(b * k) and y_mid = y0 + dt * sum(c_mid * k) substituted; the weight
        of y0 is then exactly 1."""
        # no constant terms: coefficients of theta ... theta^4
        w_y1, w_mid, w_f0, w_f1 = (QUARTIC[k][1:] for k in ("y1", "mid", "f0", "f1"))
        c_mid = self.c_mid or (0.0,) * self.stages
        out = []
        for j in range(self.stages + 1):
            b_j = self.b[j] if j < self.stages else 0.0
            m_j = c_mid[j] if j < self.stages else 0.0
            q = [b_j * y + m_j * m for y, m in zip(w_y1, w_mid, strict=True)]
            if j == 0:
                q = [x + f for x, f in zip(q, w_f0, strict=True)]
            if j == self.stages:
                q = list(w_f1)
            if any(x != 0.0 for x in q):
                out.append((j, (q[0], q[1], q[2], q[3])))
        return tuple(out)

    def _is_fsal(self) -> bool:
        return (
            self.stages > 1
            and self.c[-1] == 1.0
            and self.b[-1] == 0.0
            and all(abs(x - y) <= _TOL for x, y in zip(self.a[-1], self.b[:-1], strict=True))
        )


def nonzero_terms(coeffs) -> tuple[tuple[int, float], ...]:
    """The non-zero coefficients as ``(index, coefficient)`` pairs."""
    return tuple((j, x) for j, x in enumerate(coeffs) if x != 0.0)


def flatten_terms(terms) -> tuple[int | float, ...]:
    """``((j0, c0), (j1, c1), ...)`` as ``(j0, c0, j1, c1, ...)``."""
    return tuple(x for pair in terms for x in pair)


def _t(name, order, c, a, b, b_err=None, c_mid=None, last_stage_as_f1=False) -> ButcherTableau:
    return ButcherTableau(
        name,
        order,
        tuple(float(x) for x in c),
        tuple(tuple(float(x) for x in row) for row in a),
        tuple(float(x) for x in b),
        None if b_err is None else tuple(float(x) for x in b_err),
        None if c_mid is None else tuple(float(x) for x in c_mid),
        last_stage_as_f1,
    )


# ----------------------------------------------------------------------------- fixed step

EULER = _t("euler", 1, [0], [[]], [1])
MIDPOINT = _t("midpoint", 2, [0, 1 / 2], [[], [1 / 2]], [0, 1])
HEUN2 = _t("heun2", 2, [0, 1], [[], [1]], [1 / 2, 1 / 2])
HEUN3 = _t("heun3", 3, [0, 1 / 3, 2 / 3], [[], [1 / 3], [0, 2 / 3]], [1 / 4, 0, 3 / 4])
# Kutta's 3/8 rule, which torchdiffeq calls rk4.
RK4 = _t(
    "rk4",
    4,
    [0, 1 / 3, 2 / 3, 1],
    [[], [1 / 3], [-1 / 3, 1], [1, -1, 1]],
    [1 / 8, 3 / 8, 3 / 8, 1 / 8],
)

# ----------------------------------------------------------------------------- adaptive

# adaptive_heun and fehlberg2 reuse their last stage as torchdiffeq does (see last_stage_as_f1)
ADAPTIVE_HEUN = _t(
    "adaptive_heun", 2, [0, 1], [[], [1]], [1 / 2, 1 / 2], [1 / 2, -1 / 2], [1 / 2, 0],
    last_stage_as_f1=True,
)  # fmt: skip
FEHLBERG2 = _t(
    "fehlberg2",
    2,
    [0, 1 / 2, 1],
    [[], [1 / 2], [1 / 256, 255 / 256]],
    [1 / 512, 255 / 256, 1 / 512],
    [-1 / 512, 0, 1 / 512],
    [0, 1 / 2, 0],
    last_stage_as_f1=True,
)
BOSH3 = _t(
    "bosh3",
    3,
    [0, 1 / 2, 3 / 4, 1],
    [[], [1 / 2], [0, 3 / 4], [2 / 9, 1 / 3, 4 / 9]],
    [2 / 9, 1 / 3, 4 / 9, 0],
    [2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8],
    [0, 1 / 2, 0, 0],
)
_DP5_B = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]
DOPRI5 = _t(
    "dopri5",
    5,
    [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1],
    [
        [],
        [1 / 5],
        [3 / 40, 9 / 40],
        [44 / 45, -56 / 15, 32 / 9],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
        _DP5_B[:-1],
    ],
    _DP5_B,
    [
        35 / 384 - 1951 / 21600,
        0,
        500 / 1113 - 22642 / 50085,
        125 / 192 - 451 / 720,
        -2187 / 6784 + 12231 / 42400,
        11 / 84 - 649 / 6300,
        -1 / 60,
    ],
    # Shampine's continuous extension at theta = 1/2
    [
        6025192743 / 30085553152 / 2,
        0,
        51252292925 / 65400821598 / 2,
        -2691868925 / 45128329728 / 2,
        187940372067 / 1594534317056 / 2,
        -1776094331 / 19743644256 / 2,
        11237099 / 235043384 / 2,
    ],
)
# Tsitouras (2011), 5(4) pair with 7 stages (FSAL).
_TS5_B = [
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
    0.0,
]
_TS5_B_HAT = [
    0.09468075576583945,
    0.009183565540343254,
    0.4877705284247616,
    1.234297566930479,
    -2.7077123499835256,
    1.866628418170587,
    1 / 66,
]
TSIT5 = _t(
    "tsit5",
    5,
    [0, 0.161, 0.327, 0.9, 0.9800255409045097, 1, 1],
    [
        [],
        [0.161],
        [-0.008480655492356989, 0.335480655492357],
        [2.897153057105493, -6.359448489975075, 4.3622954328695815],
        [5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525],
        [
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.028269050394068383,
        ],
        _TS5_B[:-1],
    ],
    _TS5_B,
    [b - bh for b, bh in zip(_TS5_B, _TS5_B_HAT, strict=True)],
    # Tsitouras' continuous extension evaluated at theta = 1/2
    [
        0.10741235230096871,
        0.01135625,
        0.39560903056045305,
        -0.34475214352593553,
        1.3161853649581645,
        -1.0170608542936508,
        0.03125,
    ],
)

# Dormand–Prince 8(5,3) (DOP853, Hairer, Nørsett & Wanner): 13 stages + FSAL stage.

_DOPRI8_C = (
    0.0,
    0.05555555555555555,
    0.08333333333333333,
    0.125,
    0.3125,
    0.375,
    0.1475,
    0.465,
    0.5648654513822595,
    0.65,
    0.9246562776405044,
    1.0,
    1.0,
    1.0,
)

_DOPRI8_B = (
    0.041747491141530244,
    0.0,
    0.0,
    0.0,
    0.0,
    -0.05545232861123931,
    0.2393128072011801,
    0.703510669403443,
    -0.7597596138144609,
    0.6605630309222863,
    0.15818748251012332,
    -0.2381095387528628,
    0.25,
    0.0,
)

_DOPRI8_A = (
    (),
    (0.05555555555555555,),
    (
        0.020833333333333332,
        0.0625,
    ),
    (
        0.03125,
        0.0,
        0.09375,
    ),
    (
        0.3125,
        0.0,
        -1.171875,
        1.171875,
    ),
    (
        0.0375,
        0.0,
        0.0,
        0.1875,
        0.15,
    ),
    (
        0.04791013711111111,
        0.0,
        0.0,
        0.11224871277777777,
        -0.02550567377777778,
        0.012846823888888888,
    ),
    (
        0.01691798978729228,
        0.0,
        0.0,
        0.3878482784860432,
        0.03597736985150033,
        0.19697021421566607,
        -0.17271385234050185,
    ),
    (
        0.0690957533591923,
        0.0,
        0.0,
        -0.6342479767288541,
        -0.16119757522460407,
        0.13865030945882525,
        0.9409286140357562,
        0.21163632648194397,
    ),
    (
        0.1835569968390454,
        0.0,
        0.0,
        -2.4687680843155926,
        -0.29128688781630047,
        -0.026473020233117376,
        2.8478387641928005,
        0.2813873314698498,
        0.12374489986331466,
    ),
    (
        -1.2154248173958881,
        0.0,
        0.0,
        16.672608665945774,
        0.915741828416818,
        -6.056605804357471,
        -16.00357359415618,
        14.849303086297663,
        -13.371575735289849,
        5.134182648179638,
    ),
    (
        0.25886091643826425,
        0.0,
        0.0,
        -4.774485785489205,
        -0.4350930137770325,
        -3.0494833320722416,
        5.5779200399360995,
        6.15583158986104,
        -5.062104586736939,
        2.193926173180679,
        0.13462799865933495,
    ),
    (
        0.8224275996265075,
        0.0,
        0.0,
        -11.658673257277664,
        -0.7576221166909362,
        0.7139735881595816,
        12.075774986890057,
        -2.127659113920403,
        1.9901662070489554,
        -0.23428647154404028,
        0.17589857770794226,
        0.0,
    ),
    _DOPRI8_B[:-1],  # FSAL: the last stage is f(t1, y1)
)

_DOPRI8_B_ERR = (
    0.012194277465176744,
    0.0,
    0.0,
    0.0,
    0.0,
    0.7731539478765578,
    -0.07192809284993823,
    -1.763834521196444,
    1.787182038027448,
    -0.7829855527544889,
    0.07877188662899604,
    -0.28255398319730723,
    0.25,
    0.0,
)

_DOPRI8_C_MID = (
    0.04103130360739393,
    0.0,
    0.0,
    0.0,
    0.0,
    0.05100562801991382,
    0.2388930677412202,
    0.3096870143996103,
    -0.2172325471755352,
    0.07833405679331928,
    -0.0018614369715579948,
    0.007072844202678841,
    0.00690847373200576,
    -0.013838404349047373,
)

DOPRI8 = _t("dopri8", 8, _DOPRI8_C, _DOPRI8_A, _DOPRI8_B, _DOPRI8_B_ERR, _DOPRI8_C_MID)

FIXED: dict[str, ButcherTableau] = {t.name: t for t in (EULER, MIDPOINT, HEUN2, HEUN3, RK4)}
ADAPTIVE: dict[str, ButcherTableau] = {
    t.name: t for t in (ADAPTIVE_HEUN, FEHLBERG2, BOSH3, DOPRI5, TSIT5, DOPRI8)
}
TABLEAUX: dict[str, ButcherTableau] = {**FIXED, **ADAPTIVE}
