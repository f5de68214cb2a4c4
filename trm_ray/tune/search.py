"""Model-based search: Optuna's or HyperOpt's TPE proposes each trial from the results so far.

    space = tune_space(spec.search_space)                       # {key: Ray Tune domain}
    searcher = build_searcher(spec.search_config(), spec.search_space, metric="eval/accuracy",
                              mode="max", max_concurrent=2)
    tune.Tuner(trainable, param_space=space,
               tune_config=tune.TuneConfig(search_alg=searcher, num_samples=20, scheduler=asha)).fit()
    propose(spec.search_config(), spec.search_space, "eval/accuracy", "max", 4)   # its first 4 points

A sweep file selects this with `search: {algorithm: optuna, num_samples: 20}` (trm_ray/tune/spec.py);
the driver (driver.py) hands the searcher the space nested as the trial's params (trial_space),
so a searched trial's config has the shape of a grid trial's and the records keep its values.

The searcher takes its space from the Tuner's param_space (as Tune gives every searcher): a
searcher built with a space of its own refuses a param_space with domains, and Tuner.restore
gives the param_space again. Given a Tuner without domains, it searches tune_space(search_space).

The searcher's state (its study, the draws of its random generator) is saved with Tune's
experiment state and brought back by Tuner.restore, so a resumed sweep continues the search
where it stopped instead of proposing the first points again.
"""

from __future__ import annotations

import copy
import importlib
from typing import Any, Optional

import numpy as np
from ray.tune.search import ConcurrencyLimiter, Searcher

from trm_ray.config import ConfigError
from trm_ray.tune.spec import Domain, SearchConfig

TRIAL_KEY = "trial"    # the Tuner's config of a trial: {"trial": {"params": {dotted key: value}}}
PARAMS_KEY = "params"


def tune_space(search_space: dict[str, Domain]) -> dict[str, Any]:
    """Our domains as Ray Tune's: choice, uniform, loguniform, randint ([low, high), as ours)."""
    from ray import tune

    space: dict[str, Any] = {}
    for key, domain in search_space.items():
        kind, value = domain.kind, domain.value
        if kind == "grid":
            raise ConfigError(f"search_space {key}: grid cannot be searched (a searcher draws points, it does not "
                              f"enumerate a grid); write {{choice: [...]}}")
        if kind == "choice":
            space[key] = tune.choice(list(value))
        elif kind == "uniform":
            space[key] = tune.uniform(float(value[0]), float(value[1]))
        elif kind == "loguniform":
            space[key] = tune.loguniform(float(value[0]), float(value[1]))
        elif kind == "randint":
            space[key] = tune.randint(int(value[0]), int(value[1]))
        else:
            raise AssertionError(kind)
    return space


def trial_space(search_space: dict[str, Domain]) -> dict[str, Any]:
    """The Tuner's param_space of a searched sweep: the domains where a grid trial has its values."""
    return {TRIAL_KEY: {PARAMS_KEY: tune_space(search_space)}}


def trial_params(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's searched values from its config: nested as the sweep driver gives them, or flat
    (a Tuner whose param_space is tune_space(...) itself)."""
    nested = config.get(TRIAL_KEY)
    if isinstance(nested, dict) and isinstance(nested.get(PARAMS_KEY), dict):
        return nested[PARAMS_KEY]
    return config


def build_searcher(search: SearchConfig, search_space: dict[str, Domain], *, metric: str, mode: str,
                   max_concurrent: int) -> "SweepSearcher":
    """The searcher search.algorithm names (Optuna's TPESampler, or HyperOpt's TPE), seeded by
    search.seed, its first search.startup_trials() proposals random, at most max_concurrent
    trials proposed before their results are in. ConfigError when its library is missing."""
    default_space = tune_space(search_space)  # refuses grid domains before anything is imported
    return SweepSearcher(_base_searcher(search, metric=metric, mode=mode), max_concurrent, default_space)


def propose(search: SearchConfig, search_space: dict[str, Domain], metric: str, mode: str,
            n: int) -> list[dict[str, Any]]:
    """The first n points a fresh searcher proposes, {key: value} in the space's order: with a
    seed, the points a sweep of this space starts with (its searcher draws them in the same order)."""
    searcher = build_searcher(search, search_space, metric=metric, mode=mode, max_concurrent=max(1, n))
    searcher.set_search_properties(metric, mode, trial_space(search_space))
    return [dict(trial_params(searcher.suggest(f"propose_{index:05d}"))) for index in range(n)]


def _base_searcher(search: SearchConfig, *, metric: str, mode: str) -> Searcher:
    algorithm = search.algorithm
    if algorithm == "grid":
        raise ConfigError("search.algorithm grid proposes no trials: the grid is expanded before launch "
                          "(trm_ray.tune.spec.expand_trials); use optuna or hyperopt")
    _require(algorithm)
    if algorithm == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per searcher otherwise
        sampler = optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=search.startup_trials())
        return OptunaSearch(metric=metric, mode=mode, sampler=sampler)
    if algorithm == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(metric=metric, mode=mode, n_initial_points=search.startup_trials(),
                              random_state_seed=search.seed)
    raise AssertionError(algorithm)


def _require(algorithm: str) -> None:
    """The searcher's library (named as the algorithm), else one line saying how to install it."""
    try:
        importlib.import_module(algorithm)
    except ImportError:
        raise ConfigError(f'search algorithm {algorithm} needs {algorithm}: pip install "trm-ray[search]"') from None


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


class SweepSearcher(ConcurrencyLimiter):
    """ConcurrencyLimiter over an Optuna or HyperOpt searcher, with what sweeps need on top:

    - a choice among values that are not plain (an architecture's arch section, a list of data
      paths) is searched as the index of its value: Optuna keeps only None, bool, int, float
      and str as categories, and HyperOpt reads a mapping among the choices as a nested space;
    - proposals come back as plain Python values (JSON records, pydantic) in the space's key
      order (set_key applies `arch` before the searched arch.* keys);
    - without a param_space from the Tuner, it searches the space it was built with.
    Its state (saved with Tune's experiment state) holds the space it was given, so a restored
    searcher decodes its proposals as before.
    """

    def __init__(self, searcher: Searcher, max_concurrent: int, default_space: dict[str, Any]):
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.default_space = default_space
        self.space: Optional[dict[str, Any]] = None  # the space the searcher draws from (choices encoded)
        self.encoded: dict[tuple, list[Any]] = {}    # path in the space -> values searched as their index

    def set_search_properties(self, metric: Optional[str], mode: Optional[str], config: dict, **spec) -> bool:
        from ray.tune.search.variant_generator import parse_spec_vars

        if not parse_spec_vars(config or {})[1]:
            return False  # a param_space of constants only: search the space built with (suggest)
        space, encoded = copy.deepcopy(config), {}
        space = _encode_choices(space, (), encoded)
        accepted = super().set_search_properties(metric, mode, space, **spec)
        if accepted:
            self.space, self.encoded = space, encoded
        return accepted

    def suggest(self, trial_id: str) -> Optional[dict]:
        if self.space is None:
            self.set_search_properties(None, None, self.default_space)
        suggestion = super().suggest(trial_id)
        if suggestion is None or suggestion == Searcher.FINISHED:
            return suggestion
        return self._decode(suggestion, self.space, ())

    def _decode(self, value: Any, template: Any, path: tuple) -> Any:
        if isinstance(value, dict) and isinstance(template, dict):
            decoded = {key: self._decode(value[key], template[key], path + (key,)) for key in template if key in value}
            decoded.update({key: self._decode(item, None, path + (key,)) for key, item in value.items()
                            if key not in decoded})
            return decoded
        if path in self.encoded:
            return copy.deepcopy(self.encoded[path][int(value)])
        return value.item() if isinstance(value, np.generic) else value


def _encode_choices(node: Any, path: tuple, encoded: dict[tuple, list[Any]]) -> Any:
    """`node` with every choice among values that are not all plain made a choice among indices
    (their values recorded in `encoded` by path)."""
    from ray import tune
    from ray.tune.search.sample import Categorical

    if isinstance(node, dict):
        return {key: _encode_choices(item, path + (key,), encoded) for key, item in node.items()}
    if isinstance(node, Categorical) and not all(_is_plain(value) for value in node.categories):
        encoded[path] = list(node.categories)
        return tune.choice(list(range(len(node.categories))))
    return node
