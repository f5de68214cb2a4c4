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

Model-based search. Instead of expanding the grid up front, a searcher can propose each trial
from the results of the trials before it (trm_ray/tune/search.py):

    search:
      algorithm: optuna                     # optuna (TPE) or hyperopt (TPE); grid: the expansion above
      num_samples: 20                       # trials the searcher proposes (instead of the top-level num_samples)
      seed: 0                               # seeds its proposals; default: the sweep's seed
      random_startup: 5                     # first trials drawn at random; default min(10, num_samples // 2)
    search_space:
      lr: {loguniform: [3.0e-5, 3.0e-4]}
      arch.H_cycles: {randint: [1, 4]}
      arch: {choice: [trm, hrm]}            # architectures too, as labels the searcher picks from

A searcher draws points, it does not enumerate them: `grid` domains are refused (write
`choice`), and the trials are known only as the sweep runs, so `--dry-run` prints the space and
the searcher's first proposals, and the points checked before launch are the ends of every
domain and a few seeded draws (check_points). ASHA stops weak trials as in a grid sweep.

Sweeping over architectures. `arch.name: {grid: [trm, hrm]}` is a plain key: it sets arch.name
and nothing else (every other arch key is the recipe's). The key `arch` instead takes
architecture GROUPS, as `arch=<group>` does on the command line (trm_ray/arch/*.yaml, or
arch/<group>.yaml beside the base recipe), by name or as a mapping whose `name` is the group and
whose other keys are that architecture's own settings:

    search_space:
      arch:
        grid:
          - trm
          - {name: hrm, H_cycles: 2, L_cycles: 2, H_layers: 2}
          - transformers_baseline

A trial's arch section is built in this order, later wins:
    1. the group's YAML (all of its keys, its `name` included);
    2. the base recipe's arch keys, except `name`. Shared sizes (hidden_size, num_heads,
       expansion, forward_dtype, puzzle_emb_ndim, halt_max_steps, ...) apply to every
       architecture, so all are compared at the recipe's size. The keys that shape one
       architecture's computation (ARCH_SPECIFIC_KEYS: H/L cycles and layers, puzzle_emb_len,
       mlp_t, pos_encodings, the ACT switches) apply only to trials of the recipe's own
       architecture (its arch.name, default trm): a TRM recipe's L_cycles=6 or mlp_t=true is
       no setting for HRM or the transformer, which keep their group's (a note says which
       recipe keys were not applied to which architectures);
    3. the mapping's own keys (per-architecture settings: put recursion settings here);
    4. the arch.* keys of the sweep's `overrides` and of the command line (on every architecture:
       the way to force one value on all of them), then the other searched arch.* keys.
Each trial's value of `arch` is its whole resolved arch section (what sweep.json, the records and
`trm-ray compare --best-config` keep, so the driver and compare need no recipe to rebuild it),
shown by its short label (`arch=hrm`; trials of one architecture with different settings add
the keys that differ: `trm(L_cycles=6)`). `choice` works over architectures too.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import random
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Sequence, Union

from pydantic import Field, model_validator

from trm_ray import storage
from trm_ray.config import (
    ConfigError,
    TrainConfig,
    _Strict,
    apply_overrides,
    arch_short_name,
    build,
    read_yaml,
    set_key,
)
from trm_ray.overrides import load_arch_group, load_recipe, note, parse_override, resolve_interpolations
from trm_ray.storage import is_uri

DOMAIN_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
ARCH_KEY = "arch"  # the searched key whose values are architecture groups
# Arch keys that shape one architecture's computation: a base recipe's values of these apply only
# to trials of the recipe's own architecture (module docstring); every other arch key is shared.
ARCH_SPECIFIC_KEYS = ("H_cycles", "L_cycles", "H_layers", "L_layers", "puzzle_emb_len", "mlp_t", "pos_encodings",
                      "no_ACT_continue", "act_enabled", "act_inference", "compute_target_q")


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


class SearchConfig(_Strict):
    """How trials are chosen: the grid expansion, or a model-based searcher proposing each trial
    from the results of the trials before it (module docstring)."""

    algorithm: Literal["grid", "optuna", "hyperopt"] = Field(
        "grid", description="grid: every grid point x num_samples, random keys drawn (expand_trials); "
                            "optuna: Optuna's TPE sampler; hyperopt: HyperOpt's TPE.")
    num_samples: Optional[int] = Field(None, ge=1, description="Trials the searcher proposes (required for optuna "
                                                               "and hyperopt); grid: repeats of the grid.")
    seed: Optional[int] = Field(None, description="Seeds the proposals (same seed, same first proposals); "
                                                  "None: the sweep's seed.")
    random_startup: Optional[int] = Field(None, ge=0, description="Trials drawn at random before the model "
                                                                  "proposes; None: min(10, num_samples // 2).")

    @property
    def is_searcher(self) -> bool:
        return self.algorithm != "grid"

    def startup_trials(self) -> int:
        """random_startup, or a default that leaves the model half of a small sweep: the
        libraries' own (10 for Optuna, 20 for HyperOpt) would make a 10-trial sweep random search."""
        if self.random_startup is not None:
            return self.random_startup
        return min(10, max(1, (self.num_samples or 1) // 2))


class SweepSpec(_Strict):
    """A sweep definition (experiments/sweeps/*.yaml)."""

    name: Optional[str] = Field(None, description="Sweep name: folder under storage_path and W&B group; "
                                                  "None: the file's stem.")
    base: str = Field(..., description="Base training recipe: a path relative to the sweep file, or a "
                                     "shipped recipe such as experiments/quickstart.yaml.")
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
    search: Optional[SearchConfig] = Field(None, description="How trials are chosen: the grid expansion (default) "
                                                             "or a model-based searcher (optuna, hyperopt).")

    @model_validator(mode="after")
    def _check(self) -> "SweepSpec":
        if not self.search_space:
            raise ValueError("search_space is empty: name at least one key, e.g. {lr: {grid: [1.0e-4, 3.0e-4]}}")
        if self.search is None:
            return self
        for key in ("num_samples", "seed"):
            # two values for one setting: neither may silently win
            if key in self.model_fields_set and getattr(self.search, key) is not None:
                raise ValueError(f"{key} and search.{key} are both set: keep search.{key} (the top-level {key} "
                                 f"is the grid sweep's)")
        if not self.search.is_searcher:
            return self
        algorithm = self.search.algorithm
        if self.search.num_samples is None:
            raise ValueError(f"search.num_samples is missing: how many trials {algorithm} proposes, e.g. 20")
        grids = [key for key, domain in self.search_space.items() if domain.kind == "grid"]
        if grids:
            raise ValueError(f"search_space.{grids[0]}: grid cannot be searched by {algorithm} (a searcher draws "
                             f"points, it does not enumerate a grid); write {{choice: [...]}}")
        return self

    @property
    def searcher(self) -> Optional[str]:
        """The model-based search algorithm (optuna, hyperopt), None for a grid sweep."""
        return self.search.algorithm if self.search is not None and self.search.is_searcher else None

    def search_config(self) -> SearchConfig:
        """`search` with its defaults filled in: num_samples and seed from the top level where it
        leaves them unset (a grid sweep without a search block: the top-level ones)."""
        search = self.search or SearchConfig()
        return search.model_copy(update={
            "num_samples": search.num_samples if search.num_samples is not None else self.num_samples,
            "seed": search.seed if search.seed is not None else self.seed})


class Sweep:
    """A loaded sweep: the spec, its file, the base recipe data (overrides applied)."""

    def __init__(self, spec: SweepSpec, source: Path, base_data: dict[str, Any], overrides: Sequence[str] = (),
                 recipe_dir: Optional[Path] = None, arch_overrides: Sequence[str] = ()):
        self.spec, self.source, self.base_data = spec, source, base_data
        self.overrides = list(overrides)  # key=value given with the command, after the file's
        self.recipe_dir = recipe_dir if recipe_dir is not None else source.parent  # where arch/<group>.yaml may be
        self.arch_overrides = list(arch_overrides)  # arch keys the sweep's and the command's overrides set

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
    from trm_ray.recipes import find_recipe, is_packaged

    path = Path(path)
    # `path` stays as given (messages, sweep.json's source, the resume hint); the file read may
    # be a shipped sweep of that name
    file = find_recipe(path, "sweeps")
    spec: SweepSpec = build(SweepSpec, read_yaml(file), str(path))
    if storage_path:
        spec = spec.model_copy(update={"storage_path": storage_path})
    base_path = (file.parent / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
    if not base_path.is_file() and Path(spec.base).is_file():
        base_path = Path(spec.base)  # also accept a path relative to the working directory
    if not base_path.is_file() and is_packaged(spec.base, "experiments"):
        base_path = find_recipe(spec.base, "experiments")  # a shipped recipe by name (experiments/quickstart.yaml)
    if not base_path.is_file():
        raise ConfigError(f"{path}: base recipe {spec.base!r} does not exist (paths are relative to the sweep file, "
                          f"or name a shipped recipe such as experiments/quickstart.yaml)")
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
    override_keys = _override_keys(spec.overrides) + _override_keys(list(overrides))
    if ARCH_KEY in spec.search_space:
        _check_arch_domain(spec, path, base_path.parent, override_keys)
    arch_overrides = [key.split(".")[1] for key in override_keys if key.startswith(ARCH_KEY + ".")]
    return Sweep(spec, path, data, overrides, base_path.parent, arch_overrides)


def _override_keys(overrides: Union[dict[str, Any], list[str]]) -> list[str]:
    """The dotted keys a sweep's `overrides` (a mapping or key=value items) set."""
    if isinstance(overrides, dict):
        return list(overrides)
    return [parse_override(item).key for item in overrides]


def _check_arch_domain(spec: SweepSpec, path: Path, recipe_dir: Path, override_keys: list[str]) -> None:
    """search_space `arch`: grid or choice over group names or {name: group, <arch key>: value}
    mappings, every group found, every key an arch key; nothing else choosing the architecture."""
    where = f"{path}: search_space {ARCH_KEY}"
    domain = spec.search_space[ARCH_KEY]
    if domain.kind not in ("grid", "choice"):
        raise ConfigError(f"{where}: {domain.kind} cannot range over architectures; use grid or choice over "
                          f"group names, e.g. {{grid: [trm, hrm]}}")
    clash = [key for key in spec.search_space if key == f"{ARCH_KEY}.name"] + \
            [key for key in override_keys if key in (ARCH_KEY, f"{ARCH_KEY}.name")]
    if clash:
        raise ConfigError(f"{where} chooses the architecture of every trial, and {clash[0]} sets it too; "
                          f"drop {clash[0]}")
    for value in domain.value:
        if isinstance(value, str):
            group, own = value, {}
        elif isinstance(value, dict) and isinstance(value.get("name"), str):
            group, own = value["name"], {k: v for k, v in value.items() if k != "name"}
        else:
            raise ConfigError(f"{where}: {value!r} is not an architecture: write a group name (trm) or a mapping "
                              f"with its name and keys ({{name: hrm, H_cycles: 2}})")
        try:
            load_arch_group(group, recipe_dir)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
        for key in own:
            check_config_key(f"{ARCH_KEY}.{key}", f"{where} {group}")


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

    With a searcher (search.algorithm optuna / hyperopt) the trials are proposed while the
    sweep runs: this returns the points checked in their place (check_points).
    """
    spec = sweep.spec
    if spec.searcher:
        return check_points(sweep)
    search = spec.search_config()
    grid_keys = [k for k, d in spec.search_space.items() if d.kind == "grid"]
    # `arch` first: its value replaces the whole arch section, searched arch.* keys then apply on it
    order = sorted(spec.search_space, key=lambda k: k != ARCH_KEY)
    rng = random.Random(search.seed)
    trials = []
    for _ in range(search.num_samples):
        for point in itertools.product(*(spec.search_space[k].grid for k in grid_keys)):
            params = dict(zip(grid_keys, point))
            for key, domain in spec.search_space.items():
                if domain.kind != "grid":
                    params[key] = domain.sample(rng)
            trials.append({k: params[k] for k in order})
    if ARCH_KEY in spec.search_space:
        sections = [resolve_arch(sweep, params[ARCH_KEY]) for params in trials]
        for params, section, label in zip(trials, sections, arch_labels(sections)):
            params[ARCH_KEY] = ArchChoice(section, label)
    for params in trials:
        trial_config(sweep, params)
    if ARCH_KEY in spec.search_space:
        _note_recipe_arch_keys(sweep, spec.search_space[ARCH_KEY].value)
    return trials


# A searcher may propose any point of the space: before launch, the corners of the space (every
# combination of each key's ends) are validated, or only the all-low and all-high corners when
# there are more than MAX_CORNERS of them, plus NUM_CHECK_DRAWS seeded draws.
MAX_CORNERS = 32
NUM_CHECK_DRAWS = 8


def searched_space(sweep: Sweep) -> dict[str, Domain]:
    """The search space a searcher draws from: `arch` first (its value replaces the whole arch
    section, searched arch.* keys then apply on it), its choices resolved to their arch
    sections (ArchChoice, shown by label), so every proposed trial carries what sweep.json,
    the records and `trm-ray compare --best-config` keep for a grid sweep over `arch`."""
    space = {key: sweep.spec.search_space[key] for key in sorted(sweep.spec.search_space, key=lambda k: k != ARCH_KEY)}
    if ARCH_KEY in space:
        sections = [resolve_arch(sweep, value) for value in space[ARCH_KEY].value]
        choices = [ArchChoice(section, label) for section, label in zip(sections, arch_labels(sections))]
        space[ARCH_KEY] = Domain.model_construct(choice=choices)  # ArchChoice kept as is (no validation copy)
    return space


def domain_ends(domain: Domain) -> list[Any]:
    """A domain's extreme values: every choice, the low and high end of a range (randint: high - 1)."""
    kind, value = domain.kind, domain.value
    if kind in ("grid", "choice"):
        return list(value)
    low, high = value
    if kind == "randint":
        high -= 1  # [low, high)
    return [low] if high == low else [low, high]


def check_points(sweep: Sweep) -> list[dict[str, Any]]:
    """Points of a searched space (spec.searcher set), each validated as a full trial config
    (trial_config), so a space with an impossible corner fails before launch: the corners
    (see MAX_CORNERS) and NUM_CHECK_DRAWS draws seeded by the search's seed."""
    space = searched_space(sweep)
    ends = [domain_ends(domain) for domain in space.values()]
    corners = list(itertools.product(*ends))
    if len(corners) > MAX_CORNERS:
        corners = [tuple(e[0] for e in ends), tuple(e[-1] for e in ends)]
    points = [dict(zip(space, corner)) for corner in corners]
    rng = random.Random(sweep.spec.search_config().seed)
    points += [{key: domain.sample(rng) for key, domain in space.items()} for _ in range(NUM_CHECK_DRAWS)]
    for params in points:
        trial_config(sweep, params)
    if ARCH_KEY in space:
        _note_recipe_arch_keys(sweep, sweep.spec.search_space[ARCH_KEY].value)
    return points


def space_varied_keys(space: dict[str, Domain]) -> list[str]:
    """Searched keys that can take more than one value (what `trm-ray compare` lists)."""
    return [key for key, domain in space.items() if _differ(domain_ends(domain))]


def trial_config(sweep: Sweep, params: dict[str, Any]) -> TrainConfig:
    """The full, validated TrainConfig one trial runs."""
    data = sweep.base_data
    for key, value in params.items():
        data = set_key(data, key, value, source=f"{sweep.source}: search_space")
    data = with_resources(data, sweep.spec.resources)
    described = ", ".join(f"{k}={v if isinstance(v, ArchChoice) else repr(v)}" for k, v in params.items())
    config = build(TrainConfig, data, f"{sweep.source}: trial {{{described}}}")
    check_time_units(sweep, config, described)
    return config


# --------------------------------------------------------------------------------------------
# Sweeping over architectures (search_space `arch`; the rule is in the module docstring)
# --------------------------------------------------------------------------------------------
class ArchChoice(dict):
    """A trial's value of `arch`: its resolved arch section (a plain mapping to set_key, JSON and
    Tune), printed as its label (`hrm`) wherever trials are listed (`trm-ray sweep --dry-run`,
    Tune's trial table); `dict(choice)` shows the section."""

    def __init__(self, section: dict[str, Any], label: str):
        super().__init__(section)
        self.label = label

    def __str__(self) -> str:
        return self.label

    __repr__ = __str__


def resolve_arch(sweep: Sweep, value: Any) -> dict[str, Any]:
    """The arch section of a trial whose `arch` value is `value` (a group name or a mapping):
    group, base recipe (shared keys; its specific keys for its own architecture only), the
    mapping's keys, the overrides' arch keys. Validated with the whole trial (trial_config)."""
    return _resolve_arch(sweep, value)[0]


def _resolve_arch(sweep: Sweep, value: Any) -> tuple[dict[str, Any], list[str]]:
    """(arch section, the recipe's specific keys this architecture does not take and its group
    or mapping sets otherwise)."""
    group_name, own = (value, {}) if isinstance(value, str) else \
        (value["name"], {k: v for k, v in value.items() if k != "name"})
    section = dict(load_arch_group(group_name, sweep.recipe_dir))
    recipe = dict(sweep.base_data.get(ARCH_KEY) or {})
    same_arch = arch_label(recipe.get("name")) == arch_label(section.get("name"))
    skipped = []
    for key, item in recipe.items():
        if key == "name" or key in sweep.arch_overrides:
            continue
        if key in ARCH_SPECIFIC_KEYS and not same_arch:
            skipped.append(key)
            continue
        section[key] = item
    section.update(own)
    section.update({key: recipe[key] for key in sweep.arch_overrides if key in recipe})
    # a group's ${.hidden_size} style references, as `arch=<group>` resolves them
    section = resolve_interpolations({**sweep.base_data, ARCH_KEY: section}, f"{sweep.source}: {ARCH_KEY}")[ARCH_KEY]
    return section, [key for key in skipped if key not in own and repr(section.get(key)) != repr(recipe[key])]


def arch_label(name: Any) -> str:
    """arch.name as its short name (default trm); an unknown name as given (validation reports it)."""
    if name is None:
        return "trm"
    try:
        return arch_short_name(str(name))
    except ValueError:
        return str(name)


def arch_labels(sections: Sequence[dict[str, Any]]) -> list[str]:
    """Short labels of arch sections: the architecture's short name, plus, where sections of one
    architecture differ, the keys that differ (`trm(L_cycles=6)`)."""
    names = [arch_label(section.get("name")) for section in sections]
    labels = []
    for name, section in zip(names, sections):
        same = [other for other, other_name in zip(sections, names) if other_name == name]
        keys = sorted({k for other in same for k in set(other) | set(section)
                       if k != "name" and repr(other.get(k)) != repr(section.get(k))})
        labels.append(name + (f"({','.join(f'{k}={section.get(k)}' for k in keys)})" if keys else ""))
    return labels


def _note_recipe_arch_keys(sweep: Sweep, values: Sequence[Any]) -> None:
    """Say which of the base recipe's architecture-specific keys trials of other architectures
    do not take (their group's value differs, and their mapping does not set the key)."""
    skipped: dict[str, list[str]] = {}
    for value in values:
        section, keys = _resolve_arch(sweep, value)
        for key in keys:
            names = skipped.setdefault(key, [])
            if arch_label(section.get("name")) not in names:
                names.append(arch_label(section.get("name")))
    if skipped:
        own = arch_label((sweep.base_data.get(ARCH_KEY) or {}).get("name"))
        others = sorted({name for names in skipped.values() for name in names})
        note(f"{sweep.source}: the base recipe's arch.{', arch.'.join(skipped)} apply to {own} trials only; "
             f"{', '.join(others)} take their group's (set them in an architecture's mapping, "
             f"{{name: {others[0]}, {next(iter(skipped))}: ...}}, or for all in the sweep's overrides)")


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
    return [k for k in keys if _differ(t.get(k) for t in trials)]


def _differ(values: Iterable[Any]) -> bool:
    """More than one distinct value among `values` (mappings, such as arch sections, compared
    by their items)."""
    return len({repr(dict(v) if isinstance(v, dict) else v) for v in values}) > 1
