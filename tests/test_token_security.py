"""Ray's token file stays private: whoever can read it can run code on the cluster.

A local ray.init() with RAY_AUTH_MODE unset writes a new token to $HOME/.ray/auth_token with the
process umask (0644 in a 0755 folder under the usual 022). trm_ray.auth makes that default file
0600 and its folder 0700, and only warns (one line on stderr) about a file RAY_AUTH_TOKEN_PATH
names. Every test runs with HOME set to a temporary folder: the real ~/.ray is never touched.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trm_ray import auth
from trm_ray.jobs import resolve_token

ROOT = Path(__file__).resolve().parents[1]
TOKEN_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _token_in_shared_folder(home: Path, token: str = "secret-token") -> Path:
    """The state Ray leaves under umask 022: a 0644 token in a 0755 folder."""
    folder = home / ".ray"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o755)
    path = folder / "auth_token"
    path.write_text(token)
    path.chmod(0o644)
    return path


def _shared_file(path: Path, mode: int, token: str = "named-token") -> Path:
    path.write_text(token)
    path.chmod(mode)
    return path


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path):
    """A fresh HOME, no token in the environment, and no warning remembered from another test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in TOKEN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(auth, "_warned", set())
    return home


# --------------------------------------------------------------------------------------------
# The default file: fixed
# --------------------------------------------------------------------------------------------
def test_default_path_follows_home(home):
    assert auth.default_token_path() == home / ".ray" / "auth_token"


def test_secure_token_file_fixes_a_shared_token_and_its_folder(home, capsys):
    path = _token_in_shared_folder(home)
    assert auth.secure_token_file() is True
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert path.read_text() == "secret-token"
    assert _stderr_lines(capsys) == []


def test_secure_token_file_leaves_private_and_stricter_modes_alone(home):
    path = _token_in_shared_folder(home)
    path.chmod(0o400)
    path.parent.chmod(0o700)
    assert auth.secure_token_file() is True
    assert _mode(path) == 0o400  # read-only for its owner stays so: only others lose access
    assert _mode(path.parent) == 0o700


def test_secure_token_file_without_a_token_changes_nothing(home, capsys):
    assert auth.secure_token_file() is True
    assert not (home / ".ray").exists()
    (home / ".ray").mkdir(mode=0o755)
    (home / ".ray").chmod(0o755)
    assert auth.secure_token_file() is True
    assert _mode(home / ".ray") == 0o700  # the folder Ray will write into is private already
    assert _stderr_lines(capsys) == []


def test_folder_is_created_private_only_when_ray_may_write_a_token(home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    auth.secure_token_file(create_folder=True)
    assert not (home / ".ray").exists()
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "given")
    auth.secure_token_file(create_folder=True)
    assert not (home / ".ray").exists()
    monkeypatch.delenv("RAY_AUTH_MODE")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    old = os.umask(0o022)  # under which a plain mkdir would give 0755
    try:
        assert auth.secure_token_file(create_folder=True) is True
    finally:
        os.umask(old)
    assert _mode(home / ".ray") == 0o700


def test_a_token_that_cannot_be_fixed_warns_once_and_does_not_raise(home, monkeypatch, capsys):
    """Another user's file or a read-only file system: chmod fails; one line says what to do."""
    path = _token_in_shared_folder(home)
    path.parent.chmod(0o700)

    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(auth.os, "chmod", refuse)
    assert auth.secure_token_file() is False
    assert auth.secure_token_file() is False
    monkeypatch.undo()
    lines = _stderr_lines(capsys)
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and f"chmod 600 {path}" in lines[0] and "Operation not permitted" in lines[0]
    assert _mode(path) == 0o644


def test_unexpected_errors_never_escape(home, monkeypatch):
    _token_in_shared_folder(home)

    def broken(*args, **kwargs):
        raise ValueError("boom")

    monkeypatch.setattr(auth, "_make_private", broken)
    assert auth.secure_token_file() is False
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "t"))
    monkeypatch.setattr(auth, "_check_shared", broken)
    assert auth.check_token_path() is False
    assert auth.secure_tokens() is False


def test_a_linked_token_is_reported_not_changed(home, tmp_path, capsys):
    target = _shared_file(tmp_path / "shared-token", 0o644)
    (home / ".ray").mkdir(mode=0o700)
    (home / ".ray" / "auth_token").symlink_to(target)
    assert auth.secure_token_file() is False
    assert _mode(target) == 0o644
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and "chmod 600" in lines[0], lines


# --------------------------------------------------------------------------------------------
# RAY_AUTH_TOKEN_PATH: warned about, never changed
# --------------------------------------------------------------------------------------------
def test_token_path_readable_by_others_gets_one_warning_and_keeps_its_mode(home, tmp_path, monkeypatch, capsys):
    path = _shared_file(tmp_path / "cluster token", 0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert auth.check_token_path() is False
    assert auth.secure_tokens() is False  # a second check in the same process: no second line
    lines = _stderr_lines(capsys)
    assert len(lines) == 1, lines
    assert str(path) in lines[0]
    assert f"chmod 600 '{path}'" in lines[0]  # quoted: the name has a space
    assert _mode(path) == 0o644


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_token_path_gets_no_warning(home, tmp_path, monkeypatch, capsys, mode):
    path = _shared_file(tmp_path / "t", mode)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert auth.check_token_path() is True
    assert _stderr_lines(capsys) == []
    assert _mode(path) == mode


def test_missing_token_path_is_left_to_the_reader(home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    assert auth.check_token_path() is True
    assert _stderr_lines(capsys) == []


# --------------------------------------------------------------------------------------------
# jobs.resolve_token: the same checks where it reads a file
# --------------------------------------------------------------------------------------------
def test_resolve_token_warns_about_a_shared_token_path(home, tmp_path, monkeypatch, capsys):
    path = _shared_file(tmp_path / "t", 0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert resolve_token() == ("named-token", f"RAY_AUTH_TOKEN_PATH={path}")
    lines = _stderr_lines(capsys)
    assert len(lines) == 1 and f"chmod 600 {path}" in lines[0], lines
    assert _mode(path) == 0o644


def test_resolve_token_is_quiet_about_a_private_token_path(home, tmp_path, monkeypatch, capsys):
    path = _shared_file(tmp_path / "t", 0o600)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert resolve_token()[0] == "named-token"
    assert _stderr_lines(capsys) == []


def test_resolve_token_makes_the_default_file_private(home, capsys):
    path = _token_in_shared_folder(home)
    assert resolve_token() == ("secret-token", str(path))
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert _stderr_lines(capsys) == []


# --------------------------------------------------------------------------------------------
# A real local Ray through trm_ray.cluster.connect()
# --------------------------------------------------------------------------------------------
_CONNECT_SCRIPT = textwrap.dedent(
    """
    import json, os
    os.umask(0o022)  # the usual umask, under which Ray's own file would be 0644
    import ray
    import psutil  # Ray ships it (ray/thirdparty_files), on sys.path once ray is imported
    from trm_ray.cluster import connect

    started = connect(num_cpus=1)
    children = [p.pid for p in psutil.Process().children(recursive=True)]
    ray.shutdown()
    procs = []
    for pid in children:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=30)
    print("RESULT " + json.dumps({"started": started, "children": children, "alive": [p.pid for p in alive]}))
    """
)


@pytest.mark.ray
@pytest.mark.slow
def test_local_ray_through_connect_leaves_a_private_token(tmp_path):
    import ray  # noqa: F401  (puts Ray's bundled psutil on sys.path)
    import psutil

    home = tmp_path / "ray-home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in TOKEN_ENV + ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", _CONNECT_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    output = proc.stdout + proc.stderr
    result_lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(result_lines[-1][len("RESULT "):]) if result_lines else {}
    # Whatever the outcome, no Ray process of this test outlives it (only the pids it started).
    leftovers = [pid for pid in result.get("children", []) if psutil.pid_exists(pid)]
    for pid in leftovers:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    assert proc.returncode == 0, output[-3000:]
    assert result["started"] is True
    assert result["children"], "connect() started no Ray process"
    assert result["alive"] == [] and leftovers == [], f"Ray processes left running: {leftovers or result['alive']}"

    token = home / ".ray" / "auth_token"
    assert token.is_file(), f"Ray wrote no token under HOME={home}: {output[-2000:]}"
    assert token.read_text().strip()
    assert _mode(token) == 0o600
    assert _mode(token.parent) == 0o700
