"""Irregularly sampled time series: data (:class:`IrregularSeries`, generators, UEA files),
paths (natural cubic spline, linear interpolation) and models (ODE-RNN, latent ODE, neural CDE,
and the GRU-Δt and GRU-D baselines). The ``timeseries`` training task is built on them."""

from .data import (
    UEA_DATASETS,
    IrregularSeries,
    concat,
    drop_observations,
    load_uea,
    make_periodic,
    make_spirals,
    read_ts,
    split_at,
)
from .interpolation import LinearInterpolation, NaturalCubicSpline
from .models import (
    GRUD,
    ODERNN,
    GRUDeltaT,
    GRUDeltaTForecaster,
    LatentODE,
    NeuralCDE,
    ODERNNClassifier,
)

__all__ = [
    "GRUD",
    "ODERNN",
    "UEA_DATASETS",
    "GRUDeltaT",
    "GRUDeltaTForecaster",
    "IrregularSeries",
    "LatentODE",
    "LinearInterpolation",
    "NaturalCubicSpline",
    "NeuralCDE",
    "ODERNNClassifier",
    "concat",
    "drop_observations",
    "load_uea",
    "make_periodic",
    "make_spirals",
    "read_ts",
    "split_at",
]
