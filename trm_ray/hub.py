"""Checkpoints on the Hugging Face Hub, wherever a checkpoint is accepted.

    trm_ray.load_checkpoint("hf://alphaXiv/trm-model-maze/maze_hard_step_32550")   # a reference weights file
    trm_ray.load_checkpoint("alphaXiv/trm-model-maze/maze_hard_step_32550")        # bare: when no such local path
    trm_ray.load_checkpoint("hf://me/trm-sudoku@3f2a1c0/checkpoint_0000312")        # a folder, at a pinned revision
    push_checkpoint("runs/sudoku-mlp", "me/trm-sudoku")                            # `trm-ray hub push`

A Hub path is `hf://owner/repo[@revision][/path/in/repo]` (a web URL of the repo on huggingface.co
works too). The bare form `owner/repo[@revision][/path]` names the Hub only when no local file or
folder of that name exists: local wins, and when neither exists the error says both were tried.
The path names a reference weights file (all_config.yaml beside it, in the same folder of the
repo) or a trm-ray checkpoint folder (model.pt + all_config.yaml).

Files are fetched with huggingface_hub.hf_hub_download, so they land in, and are served from, the
standard Hugging Face cache: HF_HOME / HF_HUB_CACHE, HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE=1
apply as for any Hub download. The weights and their all_config.yaml are taken from one commit,
and the cache keeps a commit's files side by side, so the cached weights file is loaded in place.

huggingface_hub is imported only when the Hub is used (it is slow to import).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Optional, Sequence
from urllib.parse import unquote, urlsplit

import yaml

from trm_ray.checkpoint import CONFIG_FILE, MODEL_FILE, CheckpointError
from trm_ray.errors import first_line

SCHEME = "hf://"
DEFAULT_REVISION = "main"
WEB_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
# hf:// URIs of other repo types (huggingface_hub's own grammar): checkpoints live in model repos.
OTHER_REPO_TYPES = ("datasets", "spaces", "buckets", "kernels")
# A repo id's parts (huggingface_hub's rule): word characters, '-' and '.', starting and ending
# with a word character, no '--' or '..', the whole id at most 96 characters.
_REPO_PART = re.compile(r"^\w(?:[\w.-]*\w)?$")
_MAX_REPO_ID = 96
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
LOGIN_HINT = "set HF_TOKEN or run `hf auth login`"
CARD_FILE = "README.md"
CARD_TAGS = ("trm", "tiny-recursive-model", "trm-ray", "pytorch")
# Metrics a model card shows: what evaluation reports (per set and overall), not training's.
EVAL_PREFIXES = ("eval/", "ARC/")
FILES_LISTED = 8  # how many of a repo's checkpoints an error names


class HubCheckpointError(CheckpointError):
    """A Hub checkpoint that cannot be used. `reason` is the message without the leading
    "checkpoint '...': ", for callers that name the input themselves (load_checkpoint=...)."""

    def __init__(self, location: str, reason: str):
        super().__init__(f"checkpoint {location!r}: {reason}")
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Naming a checkpoint on the Hub
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubPath:
    """A path in a model repo: `path` '' is the repo root; `revision` None is the default branch."""

    repo_id: str
    path: str = ""
    revision: Optional[str] = None
    folder: bool = False  # written with a trailing '/': only a checkpoint folder can match

    @property
    def uri(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{SCHEME}{self.repo_id}{at}" + (f"/{self.path}" if self.path else "")

    @property
    def where(self) -> str:
        at = f" at revision {self.revision!r}" if self.revision else ""
        return f"Hub repo {self.repo_id!r}{at}"


def _valid_repo_id(owner: str, name: str) -> bool:
    repo_id = f"{owner}/{name}"
    return (all(_REPO_PART.match(part) for part in (owner, name)) and "--" not in repo_id and ".." not in repo_id
            and len(repo_id) <= _MAX_REPO_ID)


def _split(rest: str) -> Optional[HubPath]:
    """owner/repo[@revision][/path] -> HubPath; None when it is not of that form."""
    parts = rest.split("/")
    if len(parts) < 2:
        return None
    owner, name, tail = parts[0], parts[1], parts[2:]
    revision = None
    if "@" in name:
        name, revision = name.split("@", 1)
        if revision == "refs" and len(tail) >= 2:  # refs/pr/1, refs/convert/parquet: the only revisions with '/'
            revision, tail = f"refs/{tail[0]}/{tail[1]}", tail[2:]
        revision = unquote(revision)
        if not revision:
            return None
    folder = bool(tail) and tail[-1] == ""
    tail = tail[:-1] if folder else tail
    if not _valid_repo_id(owner, name) or any(part in ("", ".", "..") for part in tail):
        return None
    return HubPath(f"{owner}/{name}", "/".join(tail), revision, folder)


def _from_web_url(url: str) -> Optional[str]:
    """https://huggingface.co/owner/repo[/(blob|resolve|tree)/revision/path] -> owner/repo@revision/path."""
    parts = urlsplit(url)
    endpoint_host = urlsplit(os.environ.get("HF_ENDPOINT", "")).hostname
    if (parts.hostname or "").lower() not in (*WEB_HOSTS, *([endpoint_host] if endpoint_host else [])):
        return None
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2:
        return None
    owner, name, tail = segments[0], segments[1], segments[2:]
    if len(tail) >= 2 and tail[0] in ("blob", "resolve", "tree"):
        folder = "/" if tail[0] == "tree" and tail[2:] else ""  # a tree page shows a folder
        return f"{owner}/{name}@{tail[1]}" + "".join(f"/{s}" for s in tail[2:]) + folder
    if tail:
        return None  # /discussions, /commits, ...: not a file of the repo
    return f"{owner}/{name}"


def parse_hub_path(location: Any) -> Optional[HubPath]:
    """The Hub path `location` is written as, by its form alone (local files are not looked at):
    hf://..., a huggingface.co URL, or the bare owner/repo[@revision][/path]. None for anything
    else. An hf:// URI that is not a valid Hub path is a HubCheckpointError."""
    if not isinstance(location, (str, os.PathLike)):
        return None
    text = os.fspath(location)
    if not isinstance(text, str):
        return None
    if text.startswith(SCHEME):
        rest = text[len(SCHEME):]
        if rest.split("/", 1)[0] in OTHER_REPO_TYPES:
            raise HubCheckpointError(text, "checkpoints live in model repos: write hf://owner/repo/path "
                                           "(no datasets/ or spaces/ prefix)")
        parsed = _split(rest)
        if parsed is None:
            raise HubCheckpointError(text, "not a Hub path: write hf://owner/repo[@revision]/path/in/repo")
        return parsed
    if text.startswith(("https://", "http://")):
        rest = _from_web_url(text)
        return _split(rest) if rest is not None else None
    if "://" in text or os.path.isabs(text) or text.startswith(("~", ".")) or "\\" in text:
        return None
    return _split(text)


def is_hub_path(location: Any) -> bool:
    """True when `location` names a checkpoint on the Hub: any hf:// URI, a huggingface.co URL,
    or the bare owner/repo[@revision]/path when no local file or folder of that name exists."""
    if isinstance(location, (str, os.PathLike)) and str(os.fspath(location)).startswith(SCHEME):
        return True  # even a malformed one: loading it says what is wrong with it
    if parse_hub_path(location) is None:
        return False
    text = os.fspath(location)
    return "://" in text or not os.path.lexists(text)


def as_hub_uri(location: Any) -> Optional[str]:
    """The hf:// URI of a Hub path (see is_hub_path), None for anything else; a malformed hf://
    URI is a HubCheckpointError. Callers that hand the path on (to Ray workers, to another
    process) pass this, so a bare path is not judged again where a local folder of that name
    may exist."""
    if not is_hub_path(location):
        return None
    parsed = parse_hub_path(location)
    return parsed.uri + ("/" if parsed.folder and parsed.path else "")


def _is_bare(location: Any) -> bool:
    text = os.fspath(location)
    return "://" not in text


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def _status(error: BaseException) -> Optional[int]:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", None)


def _not_cached(hub_path: HubPath, what: str) -> str:
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return (f"HF_HUB_OFFLINE=1 and {what} of {hub_path.where} is not in the Hugging Face cache "
                f"({constants.HF_HUB_CACHE}): download it once online, or unset HF_HUB_OFFLINE")
    return (f"cannot reach the Hub at {constants.ENDPOINT} and {what} of {hub_path.where} is not in the Hugging "
            f"Face cache ({constants.HF_HUB_CACHE}): check the connection (or HF_ENDPOINT) and retry")


def explain(error: BaseException, hub_path: HubPath, writing: bool = False) -> str:
    """One line for a huggingface_hub error about `hub_path`: what is wrong and what to do."""
    from huggingface_hub import constants, get_token
    from huggingface_hub import errors as hf

    repo = f"Hub repo {hub_path.repo_id!r}"
    status = _status(error)
    if isinstance(error, hf.GatedRepoError):
        return (f"{repo} is gated: request access on {constants.ENDPOINT}/{hub_path.repo_id}, then {LOGIN_HINT} "
                f"with a token of the account that was granted access")
    if isinstance(error, hf.RepositoryNotFoundError):
        token = "the token sent has no access to it" if get_token() else "no token was sent"
        return (f"{repo} does not exist, or it is private or gated and {token}: check the name, or {LOGIN_HINT}")
    if isinstance(error, hf.RevisionNotFoundError):
        return (f"revision {hub_path.revision or DEFAULT_REVISION!r} does not exist in {repo}: name a branch, tag "
                f"or commit of the repo (hf://{hub_path.repo_id}@REVISION/...)")
    if status == 401:
        if writing and not get_token():
            return f"pushing to {repo} needs a token with write access: {LOGIN_HINT}"
        return f"the Hub refused the token (401 Unauthorized) for {repo}: {LOGIN_HINT} with a valid token"
    if status == 403:
        need = "write" if writing else "read"
        return f"access to {repo} denied (403 Forbidden): the token needs {need} access to it; {LOGIN_HINT}"
    if isinstance(error, (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError)):
        if writing:
            return f"cannot push to {repo}: HF_HUB_OFFLINE=1 or no connection to {constants.ENDPOINT}"
        return _not_cached(hub_path, repr(hub_path.path or "the repo root"))
    if isinstance(error, hf.HFValidationError):
        return f"not a valid Hub path: {first_line(error)}"
    if status is not None:
        return f"{repo}: the Hub answered {status}: {first_line(error)}"
    return f"{repo}: {type(error).__name__}: {first_line(error)} (Hub endpoint {constants.ENDPOINT})"


def _checkpoints_in_repo(hub_path: HubPath) -> list[str]:
    """Paths a user could load from the repo (folders holding model.pt, files beside an
    all_config.yaml), else its first files; [] when the repo cannot be listed (offline)."""
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(hub_path.repo_id, revision=hub_path.revision)
    except Exception:  # noqa: BLE001 - only a hint for an error message being written
        return []
    paths = set(files)
    found = []
    for name in sorted(files):
        folder, _, base = name.rpartition("/")
        if base == MODEL_FILE:
            found.append(folder or "(the repo root)")
        elif base not in (CONFIG_FILE, CARD_FILE) and not base.startswith(".") \
                and (f"{folder}/{CONFIG_FILE}" if folder else CONFIG_FILE) in paths:
            found.append(name)
    return found or [f for f in sorted(files) if not f.startswith(".")]


def _missing(hub_path: HubPath, offline: bool) -> str:
    if offline:
        return _not_cached(hub_path, repr(hub_path.path or "the repo root"))
    what = (f"no checkpoint folder {hub_path.path!r} (with {MODEL_FILE})" if hub_path.folder
            else f"no file {hub_path.path!r} and no folder of that name with {MODEL_FILE}") if hub_path.path \
        else f"no {MODEL_FILE} at its root"
    message = f"{hub_path.where} has {what}"
    listed = _checkpoints_in_repo(hub_path)
    if listed:
        more = ", ..." if len(listed) > FILES_LISTED else ""
        message += f"; it holds: {', '.join(listed[:FILES_LISTED])}{more}"
    return message


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubCheckpoint:
    """A checkpoint fetched into the Hugging Face cache."""

    local: Path  # the weights file, or the checkpoint folder, in the cache
    root: Path  # the cached snapshot of the commit (the repo root)
    commit: str
    hub_path: HubPath

    @property
    def pinned_uri(self) -> str:
        """hf://owner/repo@<commit>/path: the same files whatever the branch becomes."""
        return replace(self.hub_path, revision=self.commit).uri


def _download(hub_path: HubPath, filename: str, revision: Optional[str]) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(hub_path.repo_id, filename, revision=revision))


def _beside(hub_path: HubPath, folder: str, name: str, commit: Optional[str], required: bool) -> None:
    """Fetch `folder/name` of the commit into the cache, if the repo has it."""
    from huggingface_hub import errors as hf
    from huggingface_hub import try_to_load_from_cache

    filename = f"{folder}/{name}" if folder else name
    try:
        _download(hub_path, filename, commit or hub_path.revision)
    except hf.RemoteEntryNotFoundError:
        return
    except hf.LocalEntryNotFoundError:
        # Offline: a file known to be absent (the cache records 404s) is fine; any other may
        # exist on the Hub, and loading without it would blame the checkpoint.
        cached = try_to_load_from_cache(hub_path.repo_id, filename, revision=commit or hub_path.revision)
        if cached is not None and not isinstance(cached, str):
            return
        if required:
            raise CheckpointError(_not_cached(hub_path, f"{filename!r} (beside the weights)")) from None
    except Exception as error:  # noqa: BLE001 - every huggingface_hub error becomes one line
        raise CheckpointError(explain(error, hub_path)) from None


def fetch(location: Any, extra: Sequence[str] = ()) -> HubCheckpoint:
    """Download the checkpoint at Hub path `location` (with the all_config.yaml beside it and the
    `extra` files of a checkpoint folder, when the repo has them) into the Hugging Face cache.
    HubCheckpointError names `location`; for a bare path it says the local path was tried too."""
    hub_path = parse_hub_path(location)
    if hub_path is None:
        raise HubCheckpointError(str(location), "not a Hub path: write hf://owner/repo[@revision]/path/in/repo")
    try:
        return _fetch(hub_path, tuple(extra))
    except CheckpointError as error:
        reason = str(error)
        if _is_bare(location):
            reason = f"no local file or folder of that name, and on the Hugging Face Hub: {reason}"
        raise HubCheckpointError(os.fspath(location), reason) from None


def _fetch(hub_path: HubPath, extra: tuple[str, ...]) -> HubCheckpoint:
    from huggingface_hub import errors as hf

    folder_candidate = f"{hub_path.path}/{MODEL_FILE}" if hub_path.path else MODEL_FILE
    candidates = [folder_candidate] if hub_path.folder or not hub_path.path else [hub_path.path, folder_candidate]
    offline = False
    for candidate in candidates:
        try:
            weights = _download(hub_path, candidate, hub_path.revision)
            if weights.is_dir():  # offline, a cached checkpoint folder passes for the file of that name
                continue
            break
        except hf.EntryNotFoundError as error:  # not in the repo, or (offline) not in the cache
            offline = offline or isinstance(error, hf.LocalEntryNotFoundError)
        except Exception as error:  # noqa: BLE001 - every huggingface_hub error becomes one line
            raise CheckpointError(explain(error, hub_path)) from None
    else:
        raise CheckpointError(_missing(hub_path, offline))
    # hf_hub_download returns <cache>/models--owner--repo/snapshots/<commit>/<path in repo>
    root = weights.parents[len(PurePosixPath(candidate).parts) - 1]
    commit = root.name if root.parent.name == "snapshots" and _COMMIT.match(root.name) else None
    folder = str(PurePosixPath(candidate).parent).lstrip(".")
    _beside(hub_path, folder, CONFIG_FILE, commit, required=True)
    is_folder = candidate == folder_candidate
    for name in extra if is_folder else ():
        _beside(hub_path, folder, name, commit, required=False)
    return HubCheckpoint(local=weights.parent if is_folder else weights, root=root,
                         commit=commit or hub_path.revision or DEFAULT_REVISION, hub_path=hub_path)


def pinned_uri(location: Any) -> str:
    """Fetch the checkpoint (so a missing one fails now) and return its hf:// URI pinned to
    the commit fetched: what a training run records and its workers load."""
    return fetch(location).pinned_uri


# --------------------------------------------------------------------------------------------
# Pushing
# --------------------------------------------------------------------------------------------
@dataclass
class PushSource:
    """What `trm-ray hub push` uploads, found from the CHECKPOINT argument."""

    weights: Path  # local weights file (model.pt of a folder, or a reference file)
    config: Path  # its all_config.yaml
    is_folder: bool


def _eval_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    from trm_ray.run_folder import EVAL_METRIC, is_metric_value

    metrics = {k: float(v) for k, v in record.items() if k.startswith(EVAL_PREFIXES) and is_metric_value(v)}
    # the metric the best checkpoint is chosen by first, the rest in the order reported
    return dict(sorted(metrics.items(), key=lambda kv: kv[0] != EVAL_METRIC))


def _record_of_checkpoint(run_dir: str, name: str) -> Optional[dict[str, Any]]:
    from trm_ray.run_folder import EVAL_METRIC, is_metric_value, read_metrics

    records = [r for r in read_metrics(run_dir) if r.get("checkpoint") == name and is_metric_value(r.get(EVAL_METRIC))]
    return records[-1] if records else None


def read_eval_metrics(path: str | os.PathLike) -> tuple[dict[str, float], str]:
    """(metrics, where from) of a `trm-ray eval` output: its metrics.json, or the folder holding it."""
    from trm_ray.eval.outputs import METRICS_FILE

    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"--eval-metrics {str(path)!r} does not exist: pass the metrics.json "
                              f"`trm-ray eval` wrote (or its --outdir)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"--eval-metrics {str(path)!r} is not readable JSON: {first_line(error)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"--eval-metrics {str(path)!r} is not a JSON object of metrics")
    metrics = _eval_metrics(data.get("metrics", data) if isinstance(data.get("metrics", data), dict) else {})
    if not metrics:
        raise CheckpointError(f"--eval-metrics {str(path)!r} holds no eval/... metrics: pass the metrics.json "
                              f"`trm-ray eval` wrote")
    source = "`trm-ray eval`"
    if data.get("dataset"):
        source += f" on {data['dataset']}"
    if data.get("num_examples"):
        source += f" ({data['num_examples']} examples)"
    return metrics, source


def _choose(checkpoint: str) -> tuple[str, dict[str, float], str]:
    """(checkpoint location, its eval metrics, where they come from) for `trm-ray hub push`'s
    CHECKPOINT: a run folder (local or URI) stands for its best checkpoint, else its last; a
    checkpoint folder inside a run folder gets that checkpoint's evaluation from the run."""
    from trm_ray import storage
    from trm_ray.run_folder import STEP_KEY
    from trm_ray.run_folder import run_started, summarize

    location = checkpoint.rstrip("/") or checkpoint
    if is_hub_path(location):
        return location, {}, ""
    if not storage.is_uri(location):
        location = os.path.abspath(os.path.expanduser(location))
    try:
        if run_started(location):
            run = summarize(location)
            chosen = run.best_checkpoint or run.last_checkpoint
            if chosen is None:
                raise CheckpointError(f"run folder {checkpoint!r} has no checkpoint yet: push it after its first "
                                      f"evaluation interval, or pass a checkpoint folder")
            if not run.best_checkpoint:
                return chosen, {}, ""
            return chosen, _eval_metrics(run.best), (f"the best evaluation of run {storage.name_of(location)} "
                                                     f"(step {run.best.get(STEP_KEY, '?')})")
        parent = location.rsplit("/", 1)[0] if storage.is_uri(location) else os.path.dirname(location)
        record = _record_of_checkpoint(parent, storage.name_of(location)) if run_started(parent) else None
    except storage.StorageError as error:
        raise CheckpointError(f"checkpoint {checkpoint!r}: {error}") from None
    if record is None:
        return location, {}, ""
    return location, _eval_metrics(record), (f"the evaluation of run {storage.name_of(parent)} at step "
                                             f"{record.get(STEP_KEY, '?')}")


def find_push_source(path: Path, given: str) -> PushSource:
    """The files to upload of a local checkpoint: a trm-ray checkpoint folder or a reference
    weights file, each with all_config.yaml (`given`: the CHECKPOINT argument, for errors)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {given!r} does not exist: pass a run folder, a checkpoint folder "
                              f"(model.pt + {CONFIG_FILE}) or a weights file with {CONFIG_FILE} beside it")
    is_folder = path.is_dir()
    weights = path / MODEL_FILE if is_folder else path
    config = (path if is_folder else path.parent) / CONFIG_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint folder {given!r} holds no {MODEL_FILE}: pass a trm-ray checkpoint "
                              f"folder (checkpoint_<step>), a run folder or a weights file")
    if not config.is_file():
        raise CheckpointError(f"no {CONFIG_FILE} beside checkpoint {given!r}: the Hub copy needs it (it holds "
                              f"the recursion settings the reference code and trm-ray build the model from)")
    return PushSource(weights, config, is_folder)


def _markdown_value(name: str, value: float) -> str:
    return str(int(value)) if name.endswith("/count") and float(value).is_integer() else f"{value:.4f}"


def model_card(repo_id: str, load_uri: str, config_text: str, metrics: Mapping[str, float],
               metrics_source: str) -> str:
    """README.md of the repo: YAML front matter (library_name, tags), how to load the
    checkpoint, its evaluation metrics as a table and the run's config as a YAML block."""
    front = yaml.safe_dump({"library_name": "trm-ray", "tags": list(CARD_TAGS)}, sort_keys=False)
    lines = [
        "---", front.rstrip(), "---", "",
        f"# {repo_id}", "",
        "A Tiny Recursive Model (TRM, [arXiv 2510.04871](https://arxiv.org/abs/2510.04871)) checkpoint in the "
        "reference code's format (weights saved with `torch.save(state_dict)`, `all_config.yaml` beside them), "
        "pushed with trm-ray.", "",
        "## Use", "",
        "```python",
        "import trm_ray",
        "",
        f'model = trm_ray.load_checkpoint("{load_uri}")',
        "```", "",
        "```bash",
        f"trm-ray eval --checkpoint {load_uri} --dataset DATASET_FOLDER",
        "```", "",
        "## Evaluation", "",
    ]
    if metrics:
        lines += [f"From {metrics_source}." if metrics_source else "", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {name} | {_markdown_value(name, value)} |" for name, value in metrics.items()]
    else:
        lines.append("No evaluation was recorded with this checkpoint (`trm-ray hub push --eval-metrics "
                     "metrics.json` adds one from `trm-ray eval`).")
    lines += ["", "## Configuration", "", f"`{CONFIG_FILE}` of the checkpoint:", "", "```yaml",
              config_text.rstrip(), "```", ""]
    return "\n".join(lines)


@dataclass
class PushResult:
    url: str  # the checkpoint on the Hub's web pages
    load_uri: str  # what load_checkpoint / eval --checkpoint take
    commit: str
    files: list[str]


def _repo_path(path_in_repo: Optional[str], default: str) -> str:
    path = default if path_in_repo is None else path_in_repo.strip("/")
    if path == ".":
        path = ""
    if any(part in (".", "..") for part in path.split("/")) or "\\" in path:
        raise CheckpointError(f"--path-in-repo {path_in_repo!r} is not a path inside the repo")
    return path


def push_checkpoint(checkpoint: str, repo_id: str, *, path_in_repo: Optional[str] = None,
                    revision: Optional[str] = None, private: bool = False,
                    eval_metrics: Optional[str | os.PathLike] = None, message: Optional[str] = None) -> PushResult:
    """Upload a checkpoint to `repo_id` as one commit: the weights, the all_config.yaml beside
    them and a README.md model card (config, eval metrics). CHECKPOINT is a run folder (its best
    checkpoint, else its last), a trm-ray checkpoint folder or a reference weights file, local or
    at a URI (fetched first). The repo is created when missing (private with private=True), and
    the branch `revision` when it does not exist yet.

    path_in_repo is the path the checkpoint is loaded by (hf://repo_id/path_in_repo): for a
    checkpoint folder the folder holding model.pt, for a weights file the file itself; by
    default the checkpoint's own name. eval_metrics: a `trm-ray eval` metrics.json (or its
    folder), else the run's evaluation of that checkpoint when it is in a run folder."""
    from trm_ray import storage
    from trm_ray.checkpoint import local_checkpoint

    if repo_id.count("/") != 1 or not _valid_repo_id(*repo_id.split("/")):
        raise CheckpointError(f"repo {repo_id!r} is not a Hub repo id: write owner/name")
    if revision is not None and not revision.strip():
        raise CheckpointError("--revision is empty: name a branch")
    given = read_eval_metrics(eval_metrics) if eval_metrics is not None else None
    location, metrics, source = _choose(checkpoint)
    metrics, source = given or (metrics, source)
    name = storage.name_of(location)
    if storage.is_uri(location) or is_hub_path(location):
        with local_checkpoint(location) as local:
            found = find_push_source(local, checkpoint)
            return _push(found, repo_id, path_in_repo, revision, private, metrics, source, message, name)
    return _push(find_push_source(Path(location), checkpoint), repo_id, path_in_repo, revision, private, metrics,
                 source, message, name)


def _push(found: PushSource, repo_id: str, path_in_repo: Optional[str], revision: Optional[str], private: bool,
          metrics: dict[str, float], metrics_source: str, message: Optional[str], name: str) -> PushResult:
    from huggingface_hub import CommitOperationAdd, HfApi

    load_path = _repo_path(path_in_repo, name)
    if not found.is_folder and not load_path:
        raise CheckpointError("--path-in-repo of a weights file names the file (e.g. step_100), not the repo root")
    weights_in_repo = (f"{load_path}/{MODEL_FILE}" if load_path else MODEL_FILE) if found.is_folder else load_path
    folder = str(PurePosixPath(weights_in_repo).parent).lstrip(".")
    config_in_repo = f"{folder}/{CONFIG_FILE}" if folder else CONFIG_FILE
    if CARD_FILE in (weights_in_repo, config_in_repo):
        raise CheckpointError(f"--path-in-repo {path_in_repo!r} would overwrite the model card {CARD_FILE}")
    hub_path = HubPath(repo_id, load_path, revision)
    card = model_card(repo_id, hub_path.uri, found.config.read_text(), metrics, metrics_source)
    api = HfApi()
    files = [weights_in_repo, config_in_repo, CARD_FILE]
    try:
        api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        public = private and not api.repo_info(repo_id).private
    except Exception as error:  # noqa: BLE001 - every huggingface_hub error becomes one line
        raise CheckpointError(f"push to {hub_path.uri}: {explain(error, hub_path, writing=True)}") from None
    if public:  # create_repo leaves an existing repo as it is
        raise CheckpointError(f"--private: Hub repo {repo_id!r} exists and is public, so nothing was pushed: make it "
                              f"private on the Hub first, or push without --private")
    try:
        if revision and revision != DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.create_commit(
            repo_id,
            operations=[CommitOperationAdd(weights_in_repo, str(found.weights)),
                        CommitOperationAdd(config_in_repo, str(found.config)),
                        CommitOperationAdd(CARD_FILE, card.encode())],
            commit_message=message or f"trm-ray: push {name}" + ("" if load_path == name else
                                                                 f" as {load_path or 'the repo root'}"),
            revision=revision,
        )
    except Exception as error:  # noqa: BLE001 - every huggingface_hub error becomes one line
        raise CheckpointError(f"push to {hub_path.uri}: {explain(error, hub_path, writing=True)}") from None
    page = "tree" if found.is_folder else "blob"
    url = f"{api.endpoint}/{repo_id}/{page}/{revision or DEFAULT_REVISION}" + (f"/{load_path}" if load_path else "")
    return PushResult(url=url, load_uri=hub_path.uri, commit=commit.oid, files=files)
