"""One typed config tree for trm-ray: pydantic models, YAML recipes, `key=value` overrides.

Hyperparameters keep the reference names (paper symbols: docs/paper.md), so a reference
command line's overrides work unchanged (hydra's grammar and composition: trm_ray/overrides.py):

    cfg = load_train_config("experiments/sudoku-mlp.yaml", ["arch=trm", "arch.L_cycles=6", "lr=1e-4"])

Ray-only settings live under `ray.*`, checkpointing under `checkpoint.*`, W&B under `tracking.*`.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A user-caused configuration problem; the message names the key and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------
# Architecture (paper symbols: docs/paper.md#symbols-and-config-keys)
# --------------------------------------------------------------------------------------------
# The architectures trm-ray builds, by their short name, and the exact `arch.name` string the
# reference writes into all_config.yaml for each. The two TRM ablations share TRM's class name,
# so only the whole string (module path included) tells them apart: matching is exact.
ARCH_NAMES = {
    "trm": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
    "hrm": "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",
    "transformers_baseline": "recursive_reasoning.transformers_baseline@Model_ACTV2",
    "trm_singlez": "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1",
    "trm_hier6": "recursive_reasoning.trm_hier6@TinyRecursiveReasoningModel_ACTV1",
}
_REFERENCE_TO_SHORT = {reference: short for short, reference in ARCH_NAMES.items()}
# HRM and the transformer baseline have no puzzle_emb_len: their prefix is ceil(ndim / D).
PREFIX_BY_CEIL = ("hrm", "transformers_baseline")
HIER6_SLOTS = 6  # trm_hier6 keeps this many latent slots; L_cycles cannot exceed it


def arch_short_name(name: str) -> str:
    """'hrm' for 'hrm' or 'recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1'; else ValueError."""
    if name in ARCH_NAMES:
        return name
    if name in _REFERENCE_TO_SHORT:
        return _REFERENCE_TO_SHORT[name]
    raise ValueError(f"arch.name={name!r} is not an architecture trm-ray builds; known: {', '.join(ARCH_NAMES)} "
                     f"(or the reference's names, e.g. {ARCH_NAMES['hrm']})")


class ArchConfig(_Strict):
    """The network: TRM or one of the paper's baselines (`name`). Names are the reference's
    public ones; paper symbols in comments. A variant ignores the keys it has no use for, as the
    reference's config classes do (e.g. HRM ignores puzzle_emb_len and no_ACT_continue)."""

    name: str = Field("trm", description="Architecture: " + ", ".join(ARCH_NAMES) + " (reference names accepted).")
    H_cycles: int = Field(3, ge=1, description="T in the paper: deep-recursion cycles (T-1 without gradient).")
    L_cycles: int = Field(6, ge=1, description="n in the paper: latent updates per cycle.")
    H_layers: int = Field(0, ge=0, description="Blocks of the H stack (HRM, transformers_baseline); TRM ignores it.")
    L_layers: int = Field(2, ge=1, description="Blocks in the reasoning network (TRM's only stack; HRM's L stack).")
    hidden_size: int = Field(512, ge=1, description="D: width of every token state.")
    num_heads: int = Field(8, ge=1, description="Attention heads; head width is hidden_size // num_heads.")
    expansion: float = Field(4.0, gt=0, description="SwiGLU expansion factor.")
    puzzle_emb_ndim: Optional[int] = Field(
        None, ge=0, description="Puzzle embedding width; None means hidden_size, 0 disables it."
    )
    puzzle_emb_len: int = Field(16, ge=0, description="P: prefix positions; 0 means ceil(puzzle_emb_ndim / D).")
    pos_encodings: Literal["rope", "learned", "none"] = Field("rope", description="Position encoding.")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base.")
    rms_norm_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")
    halt_max_steps: int = Field(16, ge=1, description="N_sup in the paper: deep-supervision steps.")
    halt_exploration_prob: float = Field(0.1, ge=0, le=1, description="Probability of a random minimum halt step.")
    no_ACT_continue: bool = Field(True, description="Halt on sigmoid(q_halt) > 0.5 alone (no continue target).")
    mlp_t: bool = Field(False, description="MLP over the sequence axis instead of self-attention (TRM-MLP).")
    causal: bool = Field(False, description="Causal self-attention: a position sees itself and earlier ones only "
                         "(text datasets need it; puzzles attend both ways).")
    act_enabled: bool = Field(True, description="transformers_baseline: learned halting in training.")
    act_inference: bool = Field(False, description="transformers_baseline: learned halting in evaluation too.")
    compute_target_q: bool = Field(
        False, description="transformers_baseline: train q_continue on a target pass (the reference never does).")
    forward_dtype: Literal["float32", "bfloat16", "float16"] = Field("bfloat16", description="Activation dtype.")
    loss_type: Literal["stablemax_cross_entropy", "softmax_cross_entropy"] = Field(
        "stablemax_cross_entropy", description="Token loss."
    )

    @model_validator(mode="before")
    @classmethod
    def _accept_reference_layout(cls, data: Any) -> Any:
        # The reference nests the loss as arch.loss = {name: losses@ACTLossHead, loss_type: ...}
        # and names the architecture by import path; accept both so its configs load unchanged.
        if isinstance(data, dict):
            data = dict(data)
            loss = data.pop("loss", None)
            if isinstance(loss, dict) and "loss_type" in loss:
                data.setdefault("loss_type", loss["loss_type"])
            if isinstance(data.get("name"), str):
                data["name"] = arch_short_name(data["name"])
        return data

    @model_validator(mode="after")
    def _check(self) -> "ArchConfig":
        # num_heads need not divide hidden_size: the reference uses hidden_size // num_heads per
        # head (the transformer baseline's own config has D 512 with 12 heads).
        if self.pos_encodings == "rope" and self.head_dim % 2:
            raise ValueError(f"arch.pos_encodings=rope needs an even head width (hidden_size // num_heads = "
                             f"{self.head_dim}); change arch.num_heads or arch.hidden_size")
        if self.name == "trm_hier6" and self.L_cycles > HIER6_SLOTS:
            raise ValueError(f"arch.L_cycles={self.L_cycles}: trm_hier6 has {HIER6_SLOTS} latent slots, one written "
                             f"per latent update; use L_cycles <= {HIER6_SLOTS}")
        if self.causal and self.mlp_t:
            raise ValueError("arch.causal=true with arch.mlp_t=true: the MLP over the sequence axis mixes every "
                             "position into every other; use attention (arch.mlp_t=false) for a causal model")
        if self.name == "transformers_baseline" and self.pos_encodings == "none":
            raise ValueError("arch.pos_encodings=none: transformers_baseline needs rope or learned positions")
        return self

    # Derived values the model uses; defined once here so every module agrees.
    @property
    def reference_name(self) -> str:
        """The `arch.name` the reference writes for this architecture."""
        return ARCH_NAMES[self.name]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def puzzle_emb_dim(self) -> int:
        return self.hidden_size if self.puzzle_emb_ndim is None else self.puzzle_emb_ndim

    @property
    def puzzle_prefix_len(self) -> int:
        """P. Zero without a puzzle embedding (the reference crashes there for the TRM family)."""
        if self.puzzle_emb_dim == 0:
            return 0
        if self.puzzle_emb_len == 0 or self.name in PREFIX_BY_CEIL:
            return math.ceil(self.puzzle_emb_dim / self.hidden_size)
        return self.puzzle_emb_len


class DataShape(_Strict):
    """What the dataset fixes about the model (from its dataset.json: docs/formats.md#metadata)."""

    seq_len: int = Field(..., ge=1, description="S: tokens per example.")
    vocab_size: int = Field(..., ge=2, description="V: token vocabulary.")
    num_puzzle_identifiers: int = Field(..., ge=1, description="Rows of the puzzle table.")


# --------------------------------------------------------------------------------------------
# Ray, checkpointing, tracking
# --------------------------------------------------------------------------------------------
class RayConfig(_Strict):
    """How the run uses Ray. None of these change what is computed."""

    address: Optional[str] = Field(None, description="Ray address; None starts/uses a local instance (or RAY_ADDRESS).")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker; nccl instead of gloo.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict, description="Ray resources per worker. Without a CPU count: a local Ray instance "
        "the run starts gives each worker its share of the node's CPUs (all of them for one worker); on a running "
        "cluster, Ray's default (1 CPU; none with use_gpu).")
    storage_path: str = Field("runs", description="Where run folders go (local path or s3:// / gs:// URI).")
    max_failures: int = Field(0, ge=-1, description="Worker-group restarts before the run fails (-1: forever).")
    threads_per_worker: Optional[int] = Field(None, ge=1, description="torch threads per worker; None: the "
                                              "worker's CPUs.")


class CheckpointConfig(_Strict):
    num_to_keep: Optional[int] = Field(2, ge=1, description="Checkpoints kept besides the best one; None keeps all.")
    every_eval: bool = Field(True, description="Checkpoint at every evaluation (reference: checkpoint_every_eval).")
    async_upload: bool = Field(
        True, description="Object storage (s3://, gs://): upload checkpoints in the background while training "
        "goes on. A worker lost during an upload then resumes from the checkpoint before it; false waits "
        "for each upload. Local storage paths always copy synchronously."
    )


class TrackingConfig(_Strict):
    backend: Literal["wandb", "trackio", "none"] = Field(
        "wandb", description="Where runs are recorded: W&B, Trackio (local files under TRACKIO_DIR; "
        "`trackio show` opens them) or nowhere.")
    wandb: bool = Field(True, description="Record to W&B (offline files when there are no credentials); false "
                        "records nothing, as tracking.backend=none, whatever the backend.")
    project: Optional[str] = Field(None, description="W&B or Trackio project; None derives it from the dataset name.")
    group: Optional[str] = Field(None, description="W&B or Trackio group (a sweep sets it).")
    mode: Optional[Literal["online", "offline", "disabled"]] = Field(
        None, description="W&B mode; None: online with credentials, offline without. W&B only: an error with "
        "tracking.backend=trackio."
    )
    tags: list[str] = Field(default_factory=list, description="Extra tags (dataset, arch and sweep are added); "
                            "Trackio keeps them in the run's config.")
    log_checkpoints: Literal["best", "all", "none"] = Field(
        "none", description="Log checkpoints as W&B artifacts: the best one, every one, or none (a reference "
        "artifact pointing at the storage URI when the run folder is on object storage). W&B only: an error "
        "with tracking.backend=trackio, which logs every kept checkpoint's location as text."
    )

    @model_validator(mode="after")
    def _check(self) -> "TrackingConfig":
        # Settings Trackio has no counterpart for would be silently dropped: say so instead.
        # (backend=none records nothing, so they do not matter there, as with wandb=false.)
        if self.backend == "trackio":
            wandb_only = ([f"tracking.mode={self.mode}"] if self.mode is not None else []) + \
                ([f"tracking.log_checkpoints={self.log_checkpoints}"] if self.log_checkpoints != "none" else [])
            if wandb_only:
                raise ValueError(f"{' and '.join(wandb_only)} with tracking.backend=trackio: W&B settings Trackio "
                                 f"has no counterpart for; remove them (Trackio always records locally and logs "
                                 f"each kept checkpoint's location)")
        return self


# --------------------------------------------------------------------------------------------
# Training recipe (reference pretrain config + Ray keys)
# --------------------------------------------------------------------------------------------
class TrainConfig(_Strict):
    """A training recipe. Defaults are the reference's cfg_pretrain.yaml."""

    arch: ArchConfig = Field(default_factory=ArchConfig)
    data_paths: list[str] = Field(default_factory=list, description="Dataset folders (or URIs) trained together.")
    data_paths_test: list[str] = Field(default_factory=list, description="Eval datasets; empty means data_paths.")
    evaluators: list[dict[str, Any]] = Field(default_factory=list, description="Extra evaluators, e.g. [{name: arc}].")

    global_batch_size: int = Field(768, ge=1, description="Examples per optimizer step over all workers.")
    epochs: int = Field(100000, ge=1, description="Passes over the training groups.")
    eval_interval: Optional[int] = Field(10000, ge=1, description="Epochs between evaluations; must divide epochs.")
    min_eval_interval: int = Field(0, ge=0, description="No evaluation before this many eval intervals.")
    eval_save_outputs: list[str] = Field(default_factory=list, description="Eval tensors to save.")

    lr: float = Field(1e-4, ge=0, description="Base learning rate of AdamATan2.")
    lr_min_ratio: float = Field(1.0, ge=0, le=1, description="Cosine floor as a fraction of lr.")
    lr_warmup_steps: int = Field(2000, ge=0, description="Linear warmup steps.")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    weight_decay: float = Field(0.1, ge=0)
    puzzle_emb_lr: float = Field(1e-2, ge=0, description="Sign-SGD lr of the puzzle table.")
    puzzle_emb_weight_decay: float = Field(0.1, ge=0)

    ema: bool = Field(False, description="Keep an EMA of the weights; eval and checkpoints use it.")
    ema_rate: float = Field(0.999, ge=0, le=1, description="mu: shadow = (1-mu)*param + mu*shadow.")
    freeze_weights: bool = Field(False, description="Train only the puzzle embedding.")
    seed: int = Field(0, description="Seeds the model init, the loader and ACT exploration.")

    compile: Optional[bool] = Field(None, description="torch.compile the model; None: on CUDA only.")
    project_name: Optional[str] = Field(None, description="Reference name of the W&B project (alias of tracking.project).")
    run_name: Optional[str] = Field(None, description="Run name; None generates one.")
    checkpoint_path: Optional[str] = Field(None, description="Reference key; trm-ray uses ray.storage_path/run_name.")
    checkpoint_every_eval: Optional[bool] = Field(None, description="Reference alias of checkpoint.every_eval.")
    load_checkpoint: Optional[str] = Field(None, description="Initialise from this checkpoint (reference or trm-ray).")

    ray: RayConfig = Field(default_factory=RayConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.eval_interval is not None and self.epochs % self.eval_interval:
            raise ValueError(f"eval_interval={self.eval_interval} must divide epochs={self.epochs}")
        if self.global_batch_size % self.ray.num_workers:
            raise ValueError(
                f"global_batch_size={self.global_batch_size} must be a multiple of "
                f"ray.num_workers={self.ray.num_workers}"
            )
        return self

    @property
    def eval_paths(self) -> list[str]:
        """The datasets evaluated on: data_paths_test, or data_paths when it is empty."""
        return self.data_paths_test or self.data_paths

    @property
    def batch_size_per_worker(self) -> int:
        return self.global_batch_size // self.ray.num_workers


# --------------------------------------------------------------------------------------------
# YAML + overrides
# --------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A `key=value` right-hand side typed as hydra types it: true/false, ints, floats (1e-4),
    null, [lists], {dicts}; anything else (yes, 2024-01-01, 12:30) stays a string."""
    from trm_ray.overrides import parse_value as parse

    return parse(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply hydra overrides (`a.b.c=value`, `+key=`, `++key=`, `arch=<group>`) to nested dicts;
    `${oc.env:VAR}` and key references are resolved afterwards."""
    from trm_ray.overrides import compose

    return compose(data, list(overrides))


def set_key(data: dict[str, Any], dotted: str, value: Any, source: str = "") -> dict[str, Any]:
    """A copy of nested dicts `data` with `a.b.c` set to `value` (missing sections are created)."""
    data = _deepcopy(data)
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source + ': ' if source else ''}{dotted!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
    return data


def _deepcopy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deepcopy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deepcopy(v) for v in data]
    return data


class RecipeLoader(yaml.SafeLoader):
    """YAML as hydra (OmegaConf) reads a config file: `1e-4` is a float (plain YAML 1.1 reads a
    string) and dates stay strings, so a reference config means the same here."""


class RecipeDumper(yaml.SafeDumper):
    """Quotes every string that RecipeLoader or plain YAML would read back as something else
    (run_name '1e-4', '2024-01-01')."""


def _use_hydra_scalars(cls: type, keep_dates: bool) -> None:
    cls.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if keep_dates or tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    exponent_float = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    cls.add_implicit_resolver("tag:yaml.org,2002:float", exponent_float, list("-+0123456789"))


_use_hydra_scalars(RecipeLoader, keep_dates=False)
_use_hydra_scalars(RecipeDumper, keep_dates=True)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A recipe or a run's config.yaml as a mapping: a local file, or an object at a URI (a run
    folder on object storage)."""
    from trm_ray import storage
    from trm_ray.errors import first_line

    location = str(path)
    try:
        text = storage.read_text(location) if storage.is_uri(location) else Path(path).read_text()
    except (FileNotFoundError, IsADirectoryError):
        raise ConfigError(f"config file {location!r} does not exist; pass a YAML recipe path") from None
    try:
        data = yaml.load(text, Loader=RecipeLoader) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {location!r} is not valid YAML: {first_line(error)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {location!r} must hold a mapping of keys, not {type(data).__name__}")
    return data


def format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem, each naming the dotted key."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        message = problem["msg"]
        if problem["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `trm-ray train --dry-run` shows every key)"
        lines.append(f"{key}: {message}")
    return f"invalid config {source}: " + "; ".join(lines)


def build(model: type[BaseModel], data: dict[str, Any], source: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source or model.__name__)) from None


def load_train_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> TrainConfig:
    """A recipe (trm-ray's or the reference's cfg_pretrain.yaml layout) with hydra overrides."""
    from trm_ray.overrides import compose, load_recipe
    from trm_ray.recipes import find_recipe

    # a path, or the name of a shipped recipe (experiments/quickstart.yaml works from any folder)
    data = load_recipe(find_recipe(path, "experiments"), list(overrides)) if path is not None \
        else compose({}, list(overrides))
    return build(TrainConfig, data, str(path) if path else "")


def to_yaml(config: BaseModel) -> str:
    return yaml.dump(config.model_dump(mode="json"), Dumper=RecipeDumper, sort_keys=False)
