"""Experiments: the ODE-vs-ResNet comparison, the tolerance study and the depth study. The only
part of neuralode that plots; imported by the CLI, never by ``import neuralode``."""

from .compare import run_compare
from .runner import BUDGETS, Experiment
from .studies import run_depth_study, run_tolerance_study

__all__ = ["BUDGETS", "Experiment", "run_compare", "run_depth_study", "run_tolerance_study"]
