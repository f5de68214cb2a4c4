"""The sweep file: a base recipe, a search space over any config key, ASHA and resources.

    spec = load_sweep_spec("experiments/sweeps/quickstart.yaml")
    trials = expand_trials(spec)            # every trial's overrides, each validated as a TrainConfig

A sweep file (YAML; every key documented on the models below):

    name: sudoku-hl-lr                      # the sweep folder <storage_path>/<name>; default: file stem
    base: ../sudoku-mlp.yaml                # recipe, relative to this file
    overrides: {epochs: 50000}              # applied to the base before the search space (or [k=v, ...])
    search_space:
      arch.H_cycles: {grid: [2, 3]}         # every value, for every sample
      lr: {loguniform: [3.0e-5, 3.0e-4]}    # drawn once per trial (seeded)
      puzzle_emb_lr: {choice: [1.0e-3, 1.0e-2, 1.0e-1]}
      weight_decay: {uniform: [0.1, 1.0]}
      arch.L_cycles: {randint: [4, 7]}      # [low, high): 4, 5 or 6
    num_samples: 2                          # repeats of the grid, random keys redrawn each time
    metric: eval/exact_accuracy
    mode: max
    asha: {time_attr: epoch, grace_period: 5000, reduction_factor: 2, max_t: 50000}
    resources: {workers: 8, gpus_per_worker: 1}
    max_concurrent_trials: 4
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import random
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from pydantic import Field, model_validator

from trm_ray import storage
from trm_ray.config import (
    ConfigError,
    TrainConfig,
    _Strict,
    apply_overrides,
    build,
    read_yaml,
    set_key,
)
from trm_ray.data.layout import is_uri
from trm_ray.overrides import load_recipe

DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")


class Domain(_Strict):
    """One searched key: exactly one of the five kinds (Tune's names and meanings)."""

    grid: Optional[list[Any]] = Field(None, description="Every value, in every sample (tune.grid_search).")
    choice: Optional[list[Any]] = Field(None, description="One value drawn per trial (tune.choice).")
    uniform: Optional[tuple[float, float]] = Field(None, description="[low, high] drawn uniformly.")
    loguniform: Optional[tuple[float, float]] = Field(None, description="[low, high], 0 < low, drawn log-uniformly.")
    randint: Optional[tuple[int, int]] = Field(None, description="[low, high): an integer drawn uniformly.")

    @model_validator(mode="before")
    @classmethod
    def _one_kind(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"must be a mapping with one of {', '.join(DOMAIN_KINDS)} "
                             f"(e.g. {{grid: [2, 3]}}), not {data!r}")
        kinds = [k for k in data if k in DOMAIN_KINDS]
        if len(data) != 1 or len(kinds) != 1:
            raise ValueError(f"must have exactly one of {', '.join(DOMAIN_KINDS)}, got {sorted(data)}")
        return data

    @model_validator(mode="after")
    def _check(self) -> "Domain":
        kind, value = self.kind, self.value
        if kind in ("grid", "choice") and not value:
            raise ValueError(f"{kind} needs at least one value")
        if kind in ("uniform", "loguniform", "randint") and not value[0] < value[1]:
            raise ValueError(f"{kind} needs low < high, got {list(value)}")
        if kind == "loguniform" and value[0] <= 0:
            raise ValueError(f"loguniform needs 0 < low, got {list(value)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in DOMAIN_KINDS if getattr(self, k) is not None)

    @property
    def value(self) -> Any:
        return getattr(self, self.kind)

    def sample(self, rng: random.Random) -> Any:
        kind, value = self.kind, self.value
        if kind == "choice":
            return value[rng.randrange(len(value))]
        if kind == "uniform":
            return rng.uniform(*value)
        if kind == "loguniform":
            return math.exp(rng.uniform(math.log(value[0]), math.log(value[1])))
        if kind == "randint":
            return rng.randrange(value[0], value[1])
        raise AssertionError(kind)


class AshaConfig(_Strict):
    """Asynchronous successive halving (ASHA) on the metric the runs report at each evaluation."""

    time_attr: Literal["epoch", "eval_round"] = Field(
        "epoch", description="Unit of grace_period/max_t: training epochs, or evaluation rounds "
                             "(epoch / eval_interval). Both continue across --resume.")
    grace_period: int = Field(..., ge=1, description="No trial is stopped before this much time (first rung).")
    reduction_factor: int = Field(2, ge=2, description="Keep the top 1/reduction_factor at each rung; rungs at "
                                                      "grace_period * reduction_factor^k.")
    max_t: Optional[int] = Field(None, ge=1, description="Trials stop here; None: the recipe's epochs "
                                                         "(in time_attr units).")
    enabled: bool = Field(True, description="false: no early stopping, every trial runs to max_t.")

    @model_validator(mode="after")
    def _check(self) -> "AshaConfig":
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period={self.grace_period} must be <= max_t={self.max_t}")
        return self


class ResourcesConfig(_Strict):
    """What one trial takes: a Ray Train worker group plus the small Tune trainable that drives it."""

    workers: Optional[int] = Field(None, ge=1, description="Train workers per trial; None: the recipe's ray.num_workers.")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker (0: CPU training with gloo).")
    cpus_per_worker: Optional[float] = Field(None, gt=0, description="CPUs per worker; None: Ray's default (1).")
    trial_cpu: float = Field(0.1, gt=0, description="CPUs of the Tune trainable that runs the trainer "
                                                     "(it only waits; Ray needs > 0).")


class SweepSpec(_Strict):
    """A sweep definition (experiments/sweeps/*.yaml)."""

    name: Optional[str] = Field(None, description="Sweep name: folder under storage_path and W&B group; "
                                                  "None: the file's stem.")
    base: str = Field(..., description="Base training recipe (path relative to the sweep file).")
    overrides: Union[dict[str, Any], list[str]] = Field(
        default_factory=dict, description="Applied to the base before the search space: {dotted.key: value} "
                                          "or ['key=value', ...].")
    search_space: dict[str, Domain] = Field(..., description="Dotted config key -> domain (grid, choice, uniform, "
                                                             "loguniform, randint).")
    num_samples: int = Field(1, ge=1, description="Repeats of the grid; random keys are drawn anew each time.")
    seed: int = Field(0, description="Seeds the draws of the random keys: same seed, same trials.")
    metric: str = Field("eval/exact_accuracy", description="Reported metric ASHA and compare rank by.")
    mode: Literal["max", "min"] = Field("max", description="Whether a higher or lower metric is better.")
    asha: AshaConfig = Field(..., description="Early stopping.")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_concurrent_trials: Optional[int] = Field(None, ge=1, description="Trials at once; None: as many as fit.")
    storage_path: Optional[str] = Field(None, description="Where the sweep folder goes (local path or s3:// / gs:// "
                                                          "URI); None: <recipe ray.storage_path>/sweeps.")

    @model_validator(mode="after")
    def _check(self) -> "SweepSpec":
        if not self.search_space:
            raise ValueError("search_space is empty: name at least one key, e.g. {lr: {grid: [1.0e-4, 3.0e-4]}}")
        return self


class Sweep:
    """A loaded sweep: the spec, its file, the base recipe data (overrides applied)."""

    def __init__(self, spec: SweepSpec, source: Path, base_data: dict[str, Any], overrides: Sequence[str] = ()):
        self.spec, self.source, self.base_data = spec, source, base_data
        self.overrides = list(overrides)  # key=value given with the command, after the file's

    @property
    def name(self) -> str:
        return self.spec.name or self.source.stem

    @property
    def base_config(self) -> TrainConfig:
        return build(TrainConfig, with_resources(self.base_data, self.spec.resources), f"{self.source} (base)")

    def storage_root(self) -> str:
        """Where sweep folders go: a local folder (absolute) or a URI."""
        root = self.spec.storage_path or storage.join(self.base_config.ray.storage_path, "sweeps")
        return root.rstrip("/") if is_uri(root) else os.path.abspath(os.path.expanduser(root))

    def directory(self) -> str:
        return storage.join(self.storage_root(), self.name)


def load_sweep_spec(path: str | os.PathLike, overrides: Sequence[str] = (),
                    storage_path: Optional[str] = None) -> Sweep:
    """Read and check a sweep file and its base recipe (no trial is expanded yet).

    overrides: key=value for the base recipe, applied after the file's own `overrides` (e.g.
    data_paths=[s3://bucket/data/x] from the command line); storage_path replaces the file's."""
    path = Path(path)
    spec: SweepSpec = build(SweepSpec, read_yaml(path), str(path))
    if storage_path:
        spec = spec.model_copy(update={"storage_path": storage_path})
    base_path = (path.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
    if not base_path.is_file() and Path(spec.base).is_file():
        base_path = Path(spec.base)  # also accept a path relative to the working directory
    if not base_path.is_file():
        raise ConfigError(f"{path}: base recipe {spec.base!r} does not exist (paths are relative to the sweep file)")
    data = load_recipe(base_path)  # the reference layout too: defaults list, arch groups, ${oc.env:...}
    if isinstance(spec.overrides, list):
        data = apply_overrides(data, spec.overrides)
    else:
        for key, value in spec.overrides.items():
            data = set_key(data, key, value, source=f"{path}: overrides")
    if overrides:
        searched = [item.split("=", 1)[0].lstrip("+").strip() for item in overrides if "=" in item]
        clash = [key for key in searched if key in spec.search_space]
        if clash:
            # the search space would silently replace it in every trial
            raise ConfigError(f"override {clash[0]}=... : {clash[0]} is searched by {path} (search_space); "
                              f"drop the override or edit the search space")
        data = apply_overrides(data, list(overrides))
    build(TrainConfig, data, f"{base_path} with the overrides of {path}" + (" and the command" if overrides else ""))
    for key in spec.search_space:
        check_config_key(key, f"{path}: search_space")
    return Sweep(spec, path, data, overrides)


def check_config_key(dotted: str, where: str) -> None:
    """`dotted` names a TrainConfig field (e.g. arch.H_cycles), else a ConfigError naming it."""
    from pydantic import BaseModel

    model: Any = TrainConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        fields = model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) else {}
        if part not in fields:
            prefix = ".".join(parts[:i])
            if not fields:
                hint = f"{prefix} is a value, not a section"
            else:
                close = difflib.get_close_matches(part, list(fields), n=1)
                hint = (f"did you mean {'.'.join(parts[:i] + close)}?" if close else
                        f"{'keys' if not prefix else prefix + '.*'}: {', '.join(sorted(fields))}")
            raise ConfigError(f"{where}: unknown config key {dotted!r} ({hint})")
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) else None


def with_resources(data: dict[str, Any], resources: ResourcesConfig) -> dict[str, Any]:
    """The recipe as one trial runs it: workers and GPUs from the sweep's resources."""
    if resources.workers is not None:
        data = set_key(data, "ray.num_workers", resources.workers)
    if resources.gpus_per_worker:
        data = set_key(data, "ray.use_gpu", True)
    per_worker = dict((data.get("ray") or {}).get("resources_per_worker") or {})
    if resources.cpus_per_worker is not None:
        per_worker["CPU"] = resources.cpus_per_worker
    if resources.gpus_per_worker:
        per_worker["GPU"] = resources.gpus_per_worker
    if per_worker:
        data = set_key(data, "ray.resources_per_worker", per_worker)
    return data


def expand_trials(sweep: Sweep) -> list[dict[str, Any]]:
    """Every trial's searched values, {dotted key: value}, in launch order.

    For each of num_samples: the product of the grid keys, each point with the random keys
    drawn from a generator seeded by `seed`. Every trial's full config is validated here, so an
    impossible combination (num_heads not dividing hidden_size, eval_interval not dividing
    epochs, ...) fails before anything launches, naming the trial's values.
    """
    spec = sweep.spec
    grid_keys = [k for k, d in spec.search_space.items() if d.kind == "grid"]
    rng = random.Random(spec.seed)
    trials = []
    for _ in range(spec.num_samples):
        for point in itertools.product(*(spec.search_space[k].grid for k in grid_keys)):
            params = dict(zip(grid_keys, point))
            for key, domain in spec.search_space.items():
                if domain.kind != "grid":
                    params[key] = domain.sample(rng)
            trials.append({k: params[k] for k in spec.search_space})
    for params in trials:
        trial_config(sweep, params)
    return trials


def trial_config(sweep: Sweep, params: dict[str, Any]) -> TrainConfig:
    """The full, validated TrainConfig one trial runs."""
    data = sweep.base_data
    for key, value in params.items():
        data = set_key(data, key, value, source=f"{sweep.source}: search_space")
    data = with_resources(data, sweep.spec.resources)
    described = ", ".join(f"{k}={v!r}" for k, v in params.items())
    config = build(TrainConfig, data, f"{sweep.source}: trial {{{described}}}")
    check_time_units(sweep, config, described)
    return config


def max_t_epochs(sweep: Sweep, config: TrainConfig) -> int:
    """max_t of this trial in epochs."""
    asha = sweep.spec.asha
    if asha.max_t is None:
        return config.epochs
    return asha.max_t * (config.eval_interval or config.epochs) if asha.time_attr == "eval_round" else asha.max_t


def check_time_units(sweep: Sweep, config: TrainConfig, described: str) -> None:
    asha = sweep.spec.asha
    interval = config.eval_interval or config.epochs
    where = f"{sweep.source}: trial {{{described}}}"
    max_epochs = max_t_epochs(sweep, config)
    if max_epochs > config.epochs:
        raise ConfigError(f"{where}: asha.max_t is {max_epochs} epochs but the run has only epochs={config.epochs}; "
                          f"lower asha.max_t or raise epochs")
    if asha.time_attr == "epoch" and asha.grace_period % interval:
        # Runs report only at evaluations: a rung between two of them would record a later
        # result than its milestone and judge trials unevenly.
        raise ConfigError(f"{where}: asha.grace_period={asha.grace_period} epochs is not a multiple of "
                          f"eval_interval={interval}; use a multiple, or asha.time_attr: eval_round")


def varied_keys(trials: list[dict[str, Any]]) -> list[str]:
    """Searched keys whose value differs between trials."""
    keys = list(trials[0]) if trials else []
    return [k for k in keys if len({repr(t.get(k)) for t in trials}) > 1]
