"""Optuna samplers by flag value: what each strategy is and where it starts.

CMA-ES starts at w = 1 for every weight (plain addition, the point the baseline trials already scored)
with a step size of 1/6 of the searched range, so its first generation explores around plain addition.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import optuna

SAMPLERS = ("TPE", "CMA-ES", "random", "GP", "TPE-multivariate")
SAMPLER_ALIASES = {"tpe": "TPE", "cma-es": "CMA-ES", "cmaes": "CMA-ES", "cma_es": "CMA-ES", "random": "random",
                   "gp": "GP", "tpe-multivariate": "TPE-multivariate", "tpe_multivariate": "TPE-multivariate",
                   "multivariate-tpe": "TPE-multivariate"}
CMA_START_WEIGHT = 1.0  # plain addition
# Optuna's CMA-ES starts at the middle of the range with sigma0 = range / 6: for the default [0, 2] that is
# exactly w = 1 with +-0.33, so nothing needs passing. Optuna 4.9 deprecated x0 (removal planned for 6.0); it
# is passed only for a range whose middle is not the start, and the warning about it is silenced here.


def normalize_sampler_name(value: str) -> str:
    """The flag's spelling, case-insensitive (``cmaes``, ``gp``); unknown names pass through for validation."""
    return SAMPLER_ALIASES.get(value.lower(), value)


def cma_start(params: list[str], weight_min: float, weight_max: float) -> dict[str, float]:
    """x0 of CMA-ES: w = 1 where the range allows it, else the nearest bound."""
    start = min(max(CMA_START_WEIGHT, weight_min), weight_max)
    return dict.fromkeys(params, start)


def make_sampler(name: str, seed: int, params: list[str], weight_min: float,
                 weight_max: float) -> optuna.samplers.BaseSampler:
    """The sampler named by --optuna_sampler, seeded; ``params`` are the Optuna parameter names searched."""
    import warnings

    import optuna

    with warnings.catch_warnings():  # GPSampler and some TPE options are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "TPE":
            return optuna.samplers.TPESampler(seed=seed)
        if name == "TPE-multivariate":
            # one joint density over all weights instead of one per weight: proposals keep correlations
            return optuna.samplers.TPESampler(seed=seed, multivariate=True)
        if name == "CMA-ES":
            start = cma_start(params, weight_min, weight_max)
            middle = (weight_min + weight_max) / 2
            if not params or all(value == middle for value in start.values()):
                return optuna.samplers.CmaEsSampler(seed=seed)
            warnings.simplefilter("ignore", FutureWarning)
            return optuna.samplers.CmaEsSampler(x0=start, seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "GP":
            return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
