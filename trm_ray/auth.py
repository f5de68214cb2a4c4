"""Keep Ray's token file private: whoever can read it can run code on the cluster.

    from trm_ray import auth
    auth.secure_tokens()            # after ray.init, and wherever trm-ray reads a token

A local ray.init() with RAY_AUTH_MODE unset turns token authentication on and, when it finds no
token, writes a new one to ~/.ray/auth_token with the process umask: usually a 0644 file in a
0755 folder, readable by every user of a shared machine. trm-ray therefore:
  - makes that default file 0600 and its folder 0700 (`secure_token_file`), and creates the
    folder 0700 before a local ray.init when Ray is about to write a token there
    (`secure_token_file(create_folder=True)`), so the file is never reachable by others;
  - only warns about a file named by RAY_AUTH_TOKEN_PATH (`check_token_path`): the user chose
    it, and it may be shared on purpose (a group-owned secret, a mounted volume).
Every function here is a few stat calls, imports no Ray or torch, and never raises: a file that
cannot be fixed (another user's, a read-only file system) gets one warning line on stderr.
"""

from __future__ import annotations

import os
import shlex
import stat
import sys
from pathlib import Path
from typing import Optional, Union

TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# Bits that let a group or other users read or change a file; execute bits are harmless.
_SHARED_BITS = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH
# Lines already printed by this process: a command that starts Ray and submits a job would
# otherwise say the same thing twice.
_warned: set[str] = set()


def default_token_path() -> Path:
    """Where Ray writes and looks for its token when neither RAY_AUTH_TOKEN nor
    RAY_AUTH_TOKEN_PATH is set: $HOME/.ray/auth_token. Ray's Python writer uses Path.home()
    and its C++ loader reads $HOME, so a different HOME is a different token file."""
    return Path.home() / ".ray" / "auth_token"


def _warn(message: str) -> None:
    if message in _warned:
        return
    _warned.add(message)
    try:
        print(f"trm-ray: {message}", file=sys.stderr, flush=True)
    except Exception:  # a closed stderr must not stop Ray from starting
        pass


def _make_private(path: Path, folder: bool) -> bool:
    """Drop the group/other bits of `path` (a folder: all of them). True when it is private
    or absent afterwards; a warning line when it is not."""
    suggested = "chmod 700" if folder else "chmod 600"
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError as error:
        _warn(f"cannot check {path} ({error.strerror}): make sure only you can read it ({suggested} {shlex.quote(str(path))})")
        return False
    if stat.S_ISLNK(info.st_mode):
        # A link the user made (e.g. to a shared mount): report its target, never change it.
        return _check_shared(path, suggested)
    mode = stat.S_IMODE(info.st_mode)
    bits = (stat.S_IRWXG | stat.S_IRWXO) if folder else _SHARED_BITS
    if not mode & bits:
        return True
    try:
        os.chmod(path, mode & ~bits)
        return True
    except OSError as error:
        what = "is the folder of the Ray token" if folder else "holds the Ray token"
        _warn(f"{path} {what} and other users can read it, and it cannot be changed here "
              f"({error.strerror}): run {suggested} {shlex.quote(str(path))} as its owner")
        return False


def _check_shared(path: Path, suggested: str, label: str = "") -> bool:
    try:
        info = os.stat(path)  # follows links: the file Ray actually reads
    except OSError:
        return True  # missing or unreadable: whoever reads the token reports that
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        return True
    if stat.S_IMODE(info.st_mode) & _SHARED_BITS:
        _warn(f"{label}{path} holds a Ray token and other users can read or change it: "
              f"run {suggested} {shlex.quote(str(path))}")
        return False
    return True


def _may_write_default_token() -> bool:
    """Whether a local ray.init could write ~/.ray/auth_token: token mode on or unset, and no
    token given by environment (then Ray uses that one and writes nothing)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.strip().lower() != "token":
        return False
    return not (os.environ.get("RAY_AUTH_TOKEN", "").strip() or os.environ.get(TOKEN_PATH_ENV))


def secure_token_file(path: Optional[Union[str, os.PathLike]] = None, create_folder: bool = False) -> bool:
    """Make Ray's token file (default: ~/.ray/auth_token) 0600 and its folder 0700 where they
    exist. With create_folder, also create a missing folder as 0700 when a local ray.init could
    write a token into it, so the new file is private from its first byte.
    Returns True when nothing is left readable by others; never raises."""
    try:
        token = Path(path).expanduser() if path is not None else default_token_path()
        folder = token.parent
        if create_folder and path is None and _may_write_default_token() and not os.path.lexists(folder):
            try:
                os.makedirs(folder, mode=0o700, exist_ok=True)
            except OSError:
                pass  # Ray reports a folder it cannot create itself
        folder_ok = _make_private(folder, folder=True)
        return _make_private(token, folder=False) and folder_ok
    except Exception:  # never stop Ray or a submission over file modes
        return False


def check_token_path() -> bool:
    """Warn (one line on stderr) when RAY_AUTH_TOKEN_PATH names a file that other users can
    read or change. The file is left as it is. True when there is nothing to warn about."""
    try:
        raw = os.environ.get(TOKEN_PATH_ENV)
        if not raw:
            return True
        return _check_shared(Path(raw).expanduser(), "chmod 600", f"{TOKEN_PATH_ENV}: ")
    except Exception:
        return False


def secure_tokens() -> bool:
    """Both checks, for the moment after ray.init (which may have just written the token)."""
    default_ok = secure_token_file()
    path_ok = check_token_path()
    return default_ok and path_ok
