"""Ray job submission: run a trm-ray command on a Ray cluster as a Ray job.

    from trm_ray.jobs import JobClient
    client = JobClient()        # address: argument, else RAY_ADDRESS, else http://127.0.0.1:8265
    job_id = client.submit(["trm-ray", "train", "experiments/quickstart.yaml"], working_dir=".")
    client.wait(job_id)         # -> "SUCCEEDED" | "FAILED" | "STOPPED"
    print(client.logs(job_id))

What ships: the working directory (default: the current one) minus datasets, runs, virtual
environments and VCS folders. When it is a trm-ray checkout, it is copied as a plain tree (its
trm_ray/ package, with the shipped recipes in trm_ray/recipes/; symlinks are left out), so the
job runs the code you have here, not whatever version the cluster installed. A recipe argument
(experiments/quickstart.yaml) resolves on the cluster as it does here: a file of that path in
the working directory first, else the shipped recipe of that name (trm_ray/recipes).

Token authentication: Ray 2.60's JobSubmissionClient only sends a token when the *client*
process runs in RAY_AUTH_MODE=token, which a laptop shell usually does not set, so a token
cluster answers "Missing authentication token". JobClient therefore sends
`Authorization: Bearer <token>` itself, reading the token where Ray does, in Ray's order:
RAY_AUTH_TOKEN, then the file RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token. Reading a file
also checks who else can read it (trm_ray.auth): the default file is made private, a file
RAY_AUTH_TOKEN_PATH names gets a warning.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import shlex
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from trm_ray import __version__, auth

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
# Never shipped: built datasets and runs are big and live in shared storage on a cluster;
# environments and caches are machine-specific. Top-level names are matched at the top only
# (trm_ray/data/ is code); the name patterns anywhere.
EXCLUDED_TOP_LEVEL = ("data", "runs", "wandb", "checkpoints", ".git", ".venv", "venv", ".ci-venv", "build", "dist")
EXCLUDED_NAMES = ("__pycache__", "*.egg-info", ".pytest_cache", "*.tmp-*", "*.pyc", ".DS_Store")
# The same rules in the gitwildmatch syntax of runtime_env["excludes"], for plain folders.
RUNTIME_ENV_EXCLUDES = [f"/{name}/" for name in EXCLUDED_TOP_LEVEL] + [f"{name}" for name in EXCLUDED_NAMES]
JOB_METADATA = {"submitted_by": "trm-ray", "trm_ray_version": __version__}


class JobError(RuntimeError):
    """A job-submission problem a user can fix; the message says how, in one line."""


# --------------------------------------------------------------------------------------------
# Address and token
# --------------------------------------------------------------------------------------------
def resolve_address(address: Optional[str] = None) -> str:
    """The dashboard URL: `address`, else RAY_ADDRESS, else http://127.0.0.1:8265."""
    address = (address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS).strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise JobError(
            f"address {address!r} is not a dashboard URL: pass --address http://HOST:8265 "
            "(`ray dashboard cluster/<config>.yaml` forwards one to http://127.0.0.1:8265)"
        )
    return address


def resolve_token() -> tuple[Optional[str], str]:
    """(token, where it came from); (None, "") when there is none. Ray's own precedence."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token, "RAY_AUTH_TOKEN"
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token_path:
        try:
            token = Path(token_path).expanduser().read_text().strip()
        except OSError as error:
            raise JobError(f"RAY_AUTH_TOKEN_PATH={token_path} cannot be read ({error.strerror}): point it at the cluster's token file") from None
        if not token:
            raise JobError(f"RAY_AUTH_TOKEN_PATH={token_path} is empty: put the cluster's token in it")
        auth.check_token_path()
        return token, f"RAY_AUTH_TOKEN_PATH={token_path}"
    default_path = auth.default_token_path()
    if default_path.is_file():
        auth.secure_token_file(default_path)
        token = default_path.read_text().strip()
        if token:
            return token, str(default_path)
    return None, ""


_NO_TOKEN_HELP = (
    "set RAY_AUTH_TOKEN to the cluster's token, or put it in ~/.ray/auth_token "
    "(or a file named by RAY_AUTH_TOKEN_PATH); on the head, `ray get-auth-token` prints it"
)


# --------------------------------------------------------------------------------------------
# What ships
# --------------------------------------------------------------------------------------------
def command_line(command: Sequence[str]) -> str:
    """The job's shell entrypoint. Several words are quoted one by one (`$` stays literal); a
    single word is used as written, so `'... data_paths=[$TRM_RAY_STORAGE/data/x]'` expands on
    the cluster, where the cluster configs set TRM_RAY_STORAGE."""
    words = [str(w) for w in command]
    if not words or not words[0].strip():
        raise JobError("no command to run: give one after `--`, e.g. trm-ray submit -- trm-ray train experiments/quickstart.yaml")
    return words[0] if len(words) == 1 else shlex.join(words)


def is_checkout(folder: Path) -> bool:
    return (folder / "trm_ray" / "__init__.py").is_file() and (folder / "trm_ray" / "cli" / "main.py").is_file()


def _excluded(relative: Path) -> bool:
    if len(relative.parts) == 1 and relative.parts[0] in EXCLUDED_TOP_LEVEL:
        return True
    return any(fnmatch.fnmatch(relative.name, pattern) for pattern in EXCLUDED_NAMES)


def stage_checkout(checkout: Path, destination: Path) -> Path:
    """Copy a trm-ray checkout to `destination` as Ray will run it (the package, recipes, ...),
    minus the excluded folders. Returns `destination`."""

    def copy(source: Path, target: Path, relative: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(source.iterdir()):
            rel = relative / entry.name
            if _excluded(rel) or entry.is_symlink():
                continue
            if entry.is_dir():
                copy(entry, target / entry.name, rel)
            elif entry.is_file():
                shutil.copy2(entry, target / entry.name)

    for entry in sorted(checkout.iterdir()):
        if _excluded(Path(entry.name)) or entry.is_symlink():
            continue
        if entry.is_dir():
            copy(entry, destination / entry.name, Path(entry.name))
        elif entry.is_file():
            destination.mkdir(parents=True, exist_ok=True)
            shutil.copy2(entry, destination / entry.name)
    return destination


def parse_env(items: Sequence[str], environ: Optional[dict[str, str]] = None) -> dict[str, str]:
    """`NAME=VALUE` as given, `NAME` copied from this shell (so secrets stay out of the command
    line), for the job's runtime_env."""
    environ = os.environ if environ is None else environ
    env: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not name.isidentifier():
            raise JobError(f"--env {item!r}: expected NAME or NAME=VALUE")
        if not sep:
            if name not in environ:
                raise JobError(f"--env {name}: {name} is not set in this shell; export it or pass {name}=VALUE")
            value = environ[name]
        env[name] = value
    return env


# --------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------
class JobClient:
    """Ray's JobSubmissionClient with the token attached and errors a user can act on."""

    def __init__(self, address: Optional[str] = None):
        self.address = resolve_address(address)
        self.token, self.token_source = resolve_token()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        from ray.job_submission import JobSubmissionClient

        # The constructor asks the server for its version: connection and auth errors show here.
        self._client = self._call(lambda: JobSubmissionClient(self.address, headers=headers))

    def _call(self, request: Callable[[], Any], job_id: Optional[str] = None) -> Any:
        import requests
        from ray.exceptions import AuthenticationError

        try:
            return request()
        except AuthenticationError as error:
            text = str(error)
            # Without a token of ours, whatever was sent came from Ray's own process-wide cache
            # (left by an earlier local ray.init() in this process), not from the user's settings.
            if self.token is None or "Missing authentication token" in text or "Authentication required" in text:
                raise JobError(f"the Ray cluster at {self.address} requires a token and none was found: {_NO_TOKEN_HELP}") from None
            raise JobError(
                f"the Ray cluster at {self.address} rejected the token from {self.token_source}: "
                "it is not this cluster's token; " + _NO_TOKEN_HELP
            ) from None
        except (ConnectionError, requests.exceptions.ConnectionError):
            raise JobError(
                f"cannot reach a Ray dashboard at {self.address}: start or forward one "
                "(`ray dashboard cluster/<config>.yaml`), or pass --address / set RAY_ADDRESS"
            ) from None
        except RuntimeError as error:
            text = " ".join(str(error).split())
            if job_id is not None and ("404" in text or "does not exist" in text):
                raise JobError(f"no job {job_id!r} on {self.address}: `trm-ray jobs list` shows the job ids") from None
            raise JobError(f"the Ray job server at {self.address} said: {text}") from None

    # -- submit ---------------------------------------------------------------------------
    def submit(
        self,
        command: Sequence[str],
        working_dir: Optional[str | os.PathLike] = ".",
        env: Optional[dict[str, str]] = None,
        submission_id: Optional[str] = None,
    ) -> str:
        """Start `command` as a Ray job; returns its id (raysubmit_...)."""
        entrypoint = command_line(command)
        runtime_env: dict[str, Any] = {}
        if env:
            runtime_env["env_vars"] = dict(env)
        with tempfile.TemporaryDirectory(prefix="trm-ray-job-") as scratch:
            if working_dir is not None:
                folder = Path(working_dir).expanduser().resolve()
                if not folder.is_dir():
                    raise JobError(f"--working-dir {working_dir}: no such folder")
                if is_checkout(folder):
                    runtime_env["working_dir"] = str(stage_checkout(folder, Path(scratch) / "trm-ray"))
                else:
                    runtime_env["working_dir"] = str(folder)
                    runtime_env["excludes"] = list(RUNTIME_ENV_EXCLUDES)
            # The upload happens inside submit_job, so the staged copy may go afterwards.
            return self._call(
                lambda: self._client.submit_job(
                    entrypoint=entrypoint,
                    runtime_env=runtime_env or None,
                    submission_id=submission_id,
                    metadata=dict(JOB_METADATA),
                )
            )

    # -- follow ---------------------------------------------------------------------------
    def info(self, job_id: str) -> Any:
        return self._call(lambda: self._client.get_job_info(job_id), job_id)

    def status(self, job_id: str) -> str:
        return str(self._call(lambda: self._client.get_job_status(job_id), job_id).value)

    def logs(self, job_id: str) -> str:
        return self._call(lambda: self._client.get_job_logs(job_id), job_id)

    def list(self) -> list[Any]:
        """Every job the cluster knows, oldest first."""
        jobs = self._call(lambda: self._client.list_jobs())
        return sorted(jobs, key=lambda job: job.start_time or 0)

    def stop(self, job_id: str) -> bool:
        """Ask the job to stop; False when it had already finished."""
        return bool(self._call(lambda: self._client.stop_job(job_id), job_id))

    def wait(self, job_id: str, timeout_s: Optional[float] = None, poll_s: float = 1.0,
             on_status: Optional[Callable[[str], None]] = None) -> str:
        """Poll until the job ends; returns its final status (raises JobError on timeout)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = None
        while True:
            status = self.status(job_id)
            if status != last and on_status is not None:
                on_status(status)
            last = status
            if status in TERMINAL_STATUSES:
                return status
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"job {job_id} is still {status} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    def follow(self, job_id: str) -> Iterator[str]:
        """The job's output as it is written, until the job ends."""
        agen = self._client.tail_job_logs(job_id)
        loop = asyncio.new_event_loop()
        try:
            while True:
                try:
                    chunk = self._call(lambda: loop.run_until_complete(agen.__anext__()), job_id)
                except StopAsyncIteration:
                    return
                yield chunk
        finally:
            loop.run_until_complete(agen.aclose())
            loop.close()
