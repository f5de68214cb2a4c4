"""Checkpoints that move between the reference code and trm-ray both ways (docs/formats.md).

A model checkpoint is the reference's own format: `torch.save(state_dict)` of the loss head
wrapping the model, keys `_orig_mod.model.inner.*` (what a compiled reference run saves and
loads), with an `all_config.yaml` beside it. trm-ray writes the same file, plus its own
config inside that YAML, so either side can load the other's weights:

    save_checkpoint(model, "runs/x/step_100", config)   # writes step_100 + all_config.yaml
    model = load_checkpoint("runs/x/step_100")           # or a published reference file
    model = load_checkpoint("s3://bucket/runs/x/checkpoint_0000040")   # any storage URI
    model = load_checkpoint("hf://owner/repo@rev/path/step_100")       # the Hugging Face Hub (trm_ray.hub)

A checkpoint folder of a training run (checkpoint_<step>/, Ray Train checkpoints are folders)
holds
    model.pt + all_config.yaml   the reference's format (EMA weights when ema=true): loads in the
                                 reference code, in `load_checkpoint`, in `load_checkpoint=`
    train_state.pt               what a resumed run needs to continue the same curve: live weights,
                                 EMA shadow, both optimizers, step, loader position, config,
                                 dataset fingerprint (write_checkpoint / restore_checkpoint)
    tokenizer.json + text.json   a text run's only (its dataset's files, trm_ray.text.info): what
                                 `trm-ray generate` needs besides the weights

Checkpoints are data, never code: `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, TypeVar

import torch
import yaml

from trm_ray import storage
from trm_ray.errors import first_line
from trm_ray.config import ARCH_NAMES, ArchConfig, ConfigError, DataShape, TrainConfig, build, read_yaml

if TYPE_CHECKING:
    from trm_ray.train.step import TrainState

COMPILED_PREFIX = "_orig_mod."
PUZZLE_TABLE_KEY = "model.inner.puzzle_emb.weights"
CONFIG_FILE = "all_config.yaml"
MODEL_FILE = "model.pt"  # inside a trm-ray checkpoint folder (Ray Train checkpoints are folders)
TRAIN_STATE_FILE = "train_state.pt"  # beside it: what resuming a run reads
TRAIN_STATE_VERSION = 1
REFERENCE_LOSS_NAME = "losses@ACTLossHead"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


# --------------------------------------------------------------------------------------------
# checkpoints at a URI
# --------------------------------------------------------------------------------------------
T = TypeVar("T")


def is_remote(path: str | os.PathLike) -> bool:
    """A checkpoint that is fetched before loading: a storage URI (s3://...) or a Hub path
    (hf://owner/repo/..., or a bare owner/repo/... naming no local file: trm_ray.hub)."""
    return storage.is_uri(path) or _is_hub_path(path)


def _is_hub_path(path: str | os.PathLike) -> bool:
    from trm_ray import hub  # hub imports this module

    return hub.is_hub_path(path)


@contextlib.contextmanager
def local_checkpoint(path: str | os.PathLike, extra: tuple[str, ...] = ()) -> Iterator[Path]:
    """A local path for the checkpoint at `path` for the duration of the block.

    Local paths are themselves. For a URI only what loading needs is fetched, into a temporary
    folder: of a trm-ray checkpoint folder its model.pt and all_config.yaml (plus the `extra`
    files, e.g. train_state.pt), yielded as a folder; of a reference weights file the file and
    the all_config.yaml beside it. A Hub path is fetched the same way into the Hugging Face
    cache and used there (trm_ray.hub). A checkpoint that is not there is a CheckpointError."""
    if _is_hub_path(path):
        from trm_ray import hub

        yield hub.fetch(path, extra).local
        return
    if not storage.is_uri(path):
        yield Path(path)
        return
    uri = str(path).rstrip("/")
    with contextlib.ExitStack() as stack:
        try:
            is_folder = storage.is_dir(uri)
            if not is_folder and not storage.is_file(uri):
                raise CheckpointError(f"checkpoint {uri!r} does not exist; pass a weights file or a checkpoint folder")
            if is_folder and not storage.is_file(storage.join(uri, MODEL_FILE)):
                raise CheckpointError(f"checkpoint folder {uri!r} holds no {MODEL_FILE}; pass a trm-ray checkpoint "
                                      f"folder (checkpoint_<step>) or a weights file")
            local = stack.enter_context(storage.local_copy(storage.join(uri, MODEL_FILE) if is_folder else uri,
                                                           files=(CONFIG_FILE, *extra)))
        except storage.StorageError as error:
            raise CheckpointError(f"checkpoint {uri!r}: {error}") from None
        yield local.parent if is_folder else local


def with_local_checkpoint(path: str | os.PathLike, load: Callable[[Path], T], extra: tuple[str, ...] = ()) -> T:
    """load(local path) for a checkpoint anywhere; errors name `path`, not the temporary copy."""
    if _is_hub_path(path):
        return _with_hub_checkpoint(path, load, extra)
    if not storage.is_uri(path):
        return load(Path(path))
    uri = str(path).rstrip("/")
    with local_checkpoint(uri, extra) as local:
        try:
            return load(local)
        except (CheckpointError, ConfigError) as error:
            # the temporary folder stands for the URI's folder (or, for a file, the one holding it)
            local_root, remote_root = (local, uri) if local.is_dir() else (local.parent, uri.rsplit("/", 1)[0])
            raise type(error)(str(error).replace(str(local_root), remote_root)) from None


def _with_hub_checkpoint(path: str | os.PathLike, load: Callable[[Path], T], extra: tuple[str, ...]) -> T:
    from trm_ray import hub

    fetched = hub.fetch(path, extra)
    try:
        return load(fetched.local)
    except (CheckpointError, ConfigError) as error:
        # the cached snapshot stands for the repo at that revision
        repo_root = hub.HubPath(fetched.hub_path.repo_id, "", fetched.hub_path.revision).uri
        raise type(error)(str(error).replace(str(fetched.root), repo_root)) from None


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def resolve_weights_file(path: str | os.PathLike) -> Path:
    """A weights file, or a trm-ray checkpoint folder holding model.pt."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass a weights file or a checkpoint folder")
    return path


def read_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The state dict at `path` (a local path, a URI or a Hub path) with any `_orig_mod.` prefix removed."""
    if is_remote(path):
        return with_local_checkpoint(path, lambda local: read_state_dict(local, map_location))
    path = resolve_weights_file(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not zipfile.is_zipfile(path):
            # torch.save writes zip archives; torch's legacy loader reports any other bytes as
            # an unsupported pickle, which would send the user after the wrong problem.
            raise CheckpointError(f"checkpoint {str(path)!r} is not a readable torch checkpoint (truncated or "
                                  f"corrupt?): not a torch.save archive") from None
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds pickled Python objects, not plain tensors, and trm-ray "
            f"never runs code from a checkpoint (weights_only=True); re-save it as "
            f"torch.save(model.state_dict()) ({first_line(error)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable torch checkpoint (truncated or corrupt?): "
            f"{first_line(error)}"
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a state dict of tensors; save model.state_dict()")
    return {k.removeprefix(COMPILED_PREFIX): v for k, v in state.items()}


def read_config_beside(path: str | os.PathLike) -> dict[str, Any] | None:
    """all_config.yaml next to a reference checkpoint file (or inside a trm-ray folder)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    candidate = folder / CONFIG_FILE
    return read_yaml(candidate) if candidate.is_file() else None


def _arch_from(config: Any) -> tuple[ArchConfig, dict[str, Any]]:
    """(arch, the whole config dict) from any accepted form of `config`."""
    if isinstance(config, TrainConfig):
        return config.arch, config.model_dump()
    if isinstance(config, ArchConfig):
        return config, {"arch": config.model_dump()}
    if isinstance(config, (str, os.PathLike)):
        config = read_yaml(config)
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a TrainConfig, ArchConfig, dict or YAML path, not {type(config).__name__}")
    arch = dict(config.get("arch", config))
    # Reference configs (and forks) may carry arch keys trm-ray does not know; they cannot
    # change the computation of a TRM we build, so note and drop them rather than refuse.
    known = set(ArchConfig.model_fields) | {"loss"}
    unknown = sorted(set(arch) - known)
    if unknown:
        print(f"trm-ray: ignoring unknown arch keys in the checkpoint config: {', '.join(unknown)}", file=sys.stderr)
        arch = {k: v for k, v in arch.items() if k in known}
    return build(ArchConfig, arch, "arch"), dict(config)


def _stack_depth(state: Mapping[str, torch.Tensor], stack: str) -> int:
    """Blocks of `stack` (H_level, L_level) in the state dict; 0 when it has none."""
    prefix = f"model.inner.{stack}.layers."
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def arch_of_state_dict(state: Mapping[str, torch.Tensor]) -> str | None:
    """Which architecture the tensors belong to, from the stacks and init buffers only that
    architecture has (None when they match none)."""
    has = {name for name in ("H_init", "L_init", "L1_init") if f"model.inner.{name}" in state}
    stacks = {stack for stack in ("H_level", "L_level") if _stack_depth(state, stack)}
    if stacks == {"H_level", "L_level"} and has == {"H_init", "L_init"}:
        return "hrm"
    if stacks == {"H_level"} and has == {"H_init"}:
        return "transformers_baseline"
    if stacks == {"L_level"} and has == {"L_init"}:
        return "trm_singlez"
    if stacks == {"L_level"} and has == {"H_init", "L1_init"}:
        return "trm_hier6"
    if stacks == {"L_level"} and has == {"H_init", "L_init"}:
        return "trm"
    return None


def _first_block(state: Mapping[str, torch.Tensor]) -> str:
    return next((f"model.inner.{stack}.layers.0" for stack in ("L_level", "H_level") if _stack_depth(state, stack)), "")


def shape_from_state_dict(state: Mapping[str, torch.Tensor], arch: ArchConfig) -> DataShape:
    """seq_len, vocab_size, num_puzzle_identifiers as fixed by the tensors themselves."""
    vocab = state["model.inner.embed_tokens.embedding_weight"].shape[0]
    table = state.get(PUZZLE_TABLE_KEY)
    num_ids = table.shape[0] if table is not None else 1
    total_len = None  # S + P, fixed only by MLP-T widths or a learned position table
    mlp_t_key = f"{_first_block(state)}.mlp_t.down_proj.weight"
    if "model.inner.embed_pos.embedding_weight" in state:
        total_len = state["model.inner.embed_pos.embedding_weight"].shape[0]
    elif mlp_t_key in state:
        total_len = state[mlp_t_key].shape[0]
    # RoPE and no-position attention models work at any length; the table grows on demand.
    # P follows the architecture's own rule (arch.puzzle_prefix_len), so it comes first.
    seq_len = total_len - arch.puzzle_prefix_len if total_len is not None else 1
    return DataShape(seq_len=seq_len, vocab_size=vocab, num_puzzle_identifiers=num_ids)


def arch_fixed_by_tensors(state: Mapping[str, torch.Tensor], arch: ArchConfig) -> ArchConfig:
    """Overwrite the config's widths with what the tensors say (they cannot lie)."""
    fixed: dict[str, Any] = {"hidden_size": state["model.inner.embed_tokens.embedding_weight"].shape[1]}
    fixed["L_layers"] = _stack_depth(state, "L_level") or arch.L_layers
    fixed["H_layers"] = _stack_depth(state, "H_level") or arch.H_layers
    fixed["mlp_t"] = any(".mlp_t." in k for k in state)
    table = state.get(PUZZLE_TABLE_KEY)
    fixed["puzzle_emb_ndim"] = table.shape[1] if table is not None else 0
    if "model.inner.embed_pos.embedding_weight" in state:
        fixed["pos_encodings"] = "learned"
    return ArchConfig(**{**arch.model_dump(), **fixed})


def check_architecture(state: Mapping[str, torch.Tensor], arch_name: str, source: str) -> None:
    """A clear error when the tensors are another architecture's than the config names."""
    found = arch_of_state_dict(state)
    if found is not None and found != arch_name:
        raise CheckpointError(f"{source} holds the weights of architecture {found} ({ARCH_NAMES[found]}) but the config says "
                              f"arch.name={arch_name}; use arch.name={found} (arch={found}) or the matching config")


def _dataset_num_identifiers(config: dict[str, Any]) -> int | None:
    """num_puzzle_identifiers of the config's datasets, when they exist on this machine."""
    from trm_ray.data.layout import metadata_path

    for data_path in config.get("data_paths") or []:
        meta = metadata_path(str(data_path), "train")
        if meta.is_file():
            return int(yaml.safe_load(meta.read_text())["num_puzzle_identifiers"])
    return None


def load_weights_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """load_state_dict with the reference's puzzle-table rule and one error listing every problem.

    A puzzle table with another number of rows (a different dataset) is reset to the mean of
    the saved rows, as the reference does."""
    expected = model.state_dict()
    inner = model
    for wrapper in ("module", "_orig_mod"):  # DDP, torch.compile
        inner = getattr(inner, wrapper, inner)
    arch = getattr(getattr(inner, "model", None), "arch", None)
    if arch is not None:
        check_architecture(state, arch.name, source)
    state = dict(state)
    table = state.get(PUZZLE_TABLE_KEY)
    if table is not None and PUZZLE_TABLE_KEY in expected and table.shape != expected[PUZZLE_TABLE_KEY].shape \
            and table.shape[1:] == expected[PUZZLE_TABLE_KEY].shape[1:]:
        print(f"trm-ray: {source}: puzzle table has {table.shape[0]} rows, the model {expected[PUZZLE_TABLE_KEY].shape[0]};"
              f" every row reset to the mean of the saved rows", file=sys.stderr)
        state[PUZZLE_TABLE_KEY] = table.mean(0, keepdim=True).expand_as(expected[PUZZLE_TABLE_KEY]).contiguous()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)}); "
                              f"check that the config (all_config.yaml or config=) matches the checkpoint")
    model.load_state_dict(state)


def load_checkpoint(path: str | os.PathLike, config: Any = None, map_location: Any = "cpu"):
    """A TRM (with its loss head) in eval mode from a reference or trm-ray checkpoint.

    config: None (read all_config.yaml beside the file), a TrainConfig/ArchConfig, a dict or a
    YAML path. Recursion settings come from it; every width the tensors fix comes from them.
    path may be a URI (s3://...): what loading needs is fetched to a temporary folder; or a Hub
    path (hf://owner/repo[@revision]/path, trm_ray.hub): fetched into the Hugging Face cache."""
    from trm_ray.model import build_model

    if is_remote(path):
        return with_local_checkpoint(path, lambda local: load_checkpoint(local, config, map_location))
    state = read_state_dict(path, map_location="cpu")
    if config is None:
        config = read_config_beside(path)
        if config is None:
            raise CheckpointError(f"no {CONFIG_FILE} beside checkpoint {str(path)!r}; pass config= "
                                  f"(a recipe YAML or TrainConfig) with the run's arch settings")
    arch, config_dict = _arch_from(config)
    if "model.inner.embed_tokens.embedding_weight" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} has no model.inner.embed_tokens weights; is it a TRM checkpoint?")
    check_architecture(state, arch.name, f"checkpoint {str(path)!r}")
    arch = arch_fixed_by_tensors(state, arch)
    shape = shape_from_state_dict(state, arch)
    num_ids = _dataset_num_identifiers(config_dict)
    if num_ids is not None:
        shape = DataShape(**{**shape.model_dump(), "num_puzzle_identifiers": num_ids})
    model = build_model(arch, shape, batch_size=1)
    load_weights_into(model, state, source=f"checkpoint {str(path)!r}")
    return model.to(map_location).eval()


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def reference_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The loss head's state dict with `_orig_mod.` keys, as a compiled reference run saves it."""
    model = getattr(model, "_orig_mod", model)
    return {COMPILED_PREFIX + k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def reference_config_dict(arch: ArchConfig, config: TrainConfig | None = None,
                          shape: DataShape | None = None) -> dict[str, Any]:
    """all_config.yaml in the reference layout (arch.name, arch.loss), trm-ray keys alongside."""
    data = config.model_dump(mode="json") if config is not None else {}
    arch_dict = arch.model_dump(mode="json")
    loss_type = arch_dict.pop("loss_type")
    arch_dict.pop("name")
    arch_dict["puzzle_emb_ndim"] = arch.puzzle_emb_dim
    data["arch"] = {"name": arch.reference_name, "loss": {"name": REFERENCE_LOSS_NAME, "loss_type": loss_type}, **arch_dict}
    if shape is not None:
        data["data_shape"] = shape.model_dump()
    return data


def atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(model: torch.nn.Module, path: str | os.PathLike, config: TrainConfig | ArchConfig | None = None,
                    shape: DataShape | None = None) -> Path:
    """Write the weights at `path` (reference format) and all_config.yaml beside it.

    A `path` that is an existing folder or ends with '/' gets model.pt inside it."""
    names_a_folder = str(path).endswith(("/", os.sep))  # Path() drops the trailing separator
    path = Path(path)
    if path.is_dir() or names_a_folder:
        path = path / MODEL_FILE
    inner = getattr(model, "_orig_mod", model)
    arch = config.arch if isinstance(config, TrainConfig) else (config or inner.model.arch)
    if shape is None:
        shape = inner.model.inner.shape
    atomic_write(path, lambda tmp: torch.save(reference_state_dict(model), tmp))
    text = yaml.safe_dump(reference_config_dict(arch, config if isinstance(config, TrainConfig) else None, shape),
                          sort_keys=False)
    atomic_write(path.parent / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return path


# --------------------------------------------------------------------------------------------
# a training run's checkpoint folder: model.pt + all_config.yaml + train_state.pt
# --------------------------------------------------------------------------------------------
def write_checkpoint(folder: Path, state: TrainState, config: TrainConfig, shape: DataShape, loader: Any,
                     fingerprint: str) -> None:
    """model.pt + all_config.yaml (reference format; EMA weights with ema=true) and train_state.pt:
    the train state (TrainState.state_dict), the loader's position (any object with state_dict()),
    the config and the dataset fingerprint; plain tensors/dicts (weights_only=True loads it)."""
    train_state = state.state_dict()  # the live weights, before model.pt swaps the EMA's in
    with state.averaged_weights() as module:
        save_checkpoint(module, Path(folder) / MODEL_FILE, config, shape)
    blob = {
        "version": TRAIN_STATE_VERSION,
        **train_state,
        "loader": loader.state_dict(),
        "config": config.model_dump(mode="json"),
        "dataset_fingerprint": fingerprint,
    }
    torch.save(blob, Path(folder) / TRAIN_STATE_FILE)
    copy_text_files(Path(folder), config)


def copy_text_files(folder: Path, config: TrainConfig) -> None:
    """A text run (its first dataset has text.json) keeps that dataset's text.json and
    tokenizer.json in every checkpoint folder, so that the checkpoint alone can generate text
    (`trm-ray generate`) wherever it is copied; other runs' folders are left as they are."""
    from trm_ray.text.info import is_text_dataset, load_text_info
    from trm_ray.text.tokenizer import TEXT_INFO_FILE

    if not config.data_paths or not is_text_dataset(config.data_paths[0]):
        return
    dataset = config.data_paths[0]
    try:
        names = (load_text_info(dataset).tokenizer.file, TEXT_INFO_FILE)
        files = {name: storage.read_bytes(storage.join(dataset, name)) for name in names}
    except (ValueError, OSError) as error:  # the weights are still worth keeping: say so and go on
        print(f"trm-ray: this checkpoint gets no tokenizer ({first_line(error)}); `trm-ray generate` will read "
              f"the dataset's", file=sys.stderr)
        return
    for name, data in files.items():
        atomic_write(folder / name, lambda tmp, data=data: Path(tmp).write_bytes(data))


def restore_checkpoint(folder: Path, state: TrainState, loader: Any, fingerprint: str) -> None:
    """Continue from train_state.pt: weights, EMA, optimizers, step (so the lr schedule), loader
    position; a checkpoint of other data (another fingerprint) is refused."""
    path = Path(folder) / TRAIN_STATE_FILE
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {str(folder)!r} has no {TRAIN_STATE_FILE}: it cannot resume a run "
                          f"(use load_checkpoint= to start from its weights)") from None
    if blob.get("version") != TRAIN_STATE_VERSION:
        raise ConfigError(f"{path}: train state version {blob.get('version')!r} is not {TRAIN_STATE_VERSION}")
    if blob["dataset_fingerprint"] != fingerprint:
        raise ConfigError(f"{path} was trained on other data (fingerprint {blob['dataset_fingerprint']} vs "
                          f"{fingerprint} now): resume with the datasets the run started with")
    state.load_state_dict(blob)
    loader.load_state_dict(blob["loader"])


def start_from_weights(state: TrainState, path: str | os.PathLike) -> None:
    """load_checkpoint=: start from a reference or trm-ray checkpoint's weights (the puzzle
    table is reset to the saved rows' mean when its size differs, as in the reference); the
    EMA starts at them."""
    load_weights_into(state.module, read_state_dict(path), source=f"load_checkpoint={path!r}")
    state.restart_ema()
