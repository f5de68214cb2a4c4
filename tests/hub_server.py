"""A real Hugging Face Hub-protocol server on 127.0.0.1 for tests: the subset huggingface_hub uses
to create a repo (a model or a dataset), commit files, list and download them.

    server = HubServer.start(tokens={"hf_writer": "alice"})   # its own process, a free port
    server.env(hf_home)              # HF_ENDPOINT, HF_HOME, HF_TOKEN, ... as users set them
    server.commits("alice/repo")     # [(oid, summary), ...] oldest first, read over plain HTTP
    server.commits("alice/data", repo_type="dataset")    # the same for a dataset repo
    server.file("alice/repo", "README.md")                # a file's bytes, over plain HTTP
    server.gate("alice/repo")        # make a repo gated (no token: 401, any token: 403)
    server.move_after_downloads("alice/repo", "main", oid, 1)   # as if pushed to after 1 download
    server.stop()                    # by its own pid

Routes (what huggingface_hub 2.x sends; errors carry X-Error-Code like the Hub's). Model repos
under /api/models and /{repo}; dataset repos (repo_type="dataset") the same under /api/datasets and
/datasets/{repo}, in a namespace of their own (a model and a dataset may share a name):
    POST /api/repos/create                          create_repo, "type" model or dataset (409 when it exists)
    POST /api/validate-yaml                         create_commit checks a README's front matter
    GET  /api/models/{repo}[/revision/{rev}]        repo_info / model_info
    GET  /api/models/{repo}/tree/{rev}[/{path}]     list_repo_tree / list_repo_files
    POST /api/models/{repo}/paths-info/{rev}        get_paths_info (HfFileSystem)
    POST /api/models/{repo}/preupload/{rev}         every file is "regular": no LFS needed
    POST /api/models/{repo}/commit/{rev}            NDJSON: header, file (base64), deletedFile/Folder
    POST /api/models/{repo}/branch/{branch}         create_branch
    GET|HEAD /{repo}/resolve/{rev}/{path}           hf_hub_download: X-Repo-Commit, ETag, Content-Length
    .../api/datasets/{repo}/..., /datasets/{repo}/resolve/{rev}/{path}    the same for a dataset repo
Access as on the Hub: a private repo, or any repo that does not exist, answers 401 RepoNotFound
without a token (404 with one); a token the server does not know is 401 "Invalid credentials";
writing needs a known token. Revisions are branches, 40-hex commit ids or their unique prefixes.
State is in memory: the server starts empty.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.pt filter=lfs diff=lfs merge=lfs -text\n"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git_oid(content: bytes) -> str:
    """The git blob id of `content` (what the Hub reports as a regular file's oid and ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


# --------------------------------------------------------------------------------------------
# The server (runs in its own process: `python tests/hub_server.py --port P --tokens t=user,...`)
# --------------------------------------------------------------------------------------------
@dataclass
class Repo:
    private: bool = False
    gated: bool = False
    commits: dict[str, dict] = field(default_factory=dict)  # oid -> {"files", "summary", "parent", "date"}
    order: list[str] = field(default_factory=list)  # commit oids, oldest first
    branches: dict[str, str] = field(default_factory=dict)  # name -> oid
    move: Optional[list] = None  # [branch, oid, downloads left]: set by the tests (move_after_downloads)


class HubState:
    def __init__(self, tokens: dict[str, str]):
        self.tokens = tokens  # token -> user name
        self.repos: dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.counter = 0

    def commit(self, repo: Repo, branch: str, files: dict[str, bytes], summary: str) -> str:
        self.counter += 1
        parent = repo.branches.get(branch)
        seed = f"{parent}|{summary}|{self.counter}|" + "|".join(f"{k}:{git_oid(v)}" for k, v in sorted(files.items()))
        oid = hashlib.sha1(seed.encode()).hexdigest()
        repo.commits[oid] = {"files": files, "summary": summary, "parent": parent,
                             "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"}
        repo.order.append(oid)
        repo.branches[branch] = oid
        return oid

    def resolve(self, repo: Repo, revision: str) -> Optional[str]:
        if revision in repo.branches:
            return repo.branches[revision]
        if len(revision) >= 7 and all(c in "0123456789abcdef" for c in revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            return matches[0] if len(matches) == 1 else None
        return None


# Repo type -> the prefix of its web paths and of its key in HubState.repos (models have none, as
# on the Hub, so a model's key is its id).
URL_PREFIXES = {"model": "", "dataset": "datasets/"}
API_TYPES = {"models": "model", "datasets": "dataset"}


class Handler(BaseHTTPRequestHandler):
    state: HubState  # set on the class by serve()
    server_version = "TestHub/1.0"
    repo_type = "model"  # of the request being served: set by dispatch() and create_repo()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if os.environ.get("TEST_HUB_VERBOSE"):
            sys.stderr.write("hub: " + format % args + "\n")

    # ---- replies ----------------------------------------------------------------------------
    def reply(self, status: int, body: bytes = b"", content_type: str = "application/json",
              headers: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json(self, status: int, value, headers: Optional[dict[str, str]] = None) -> None:
        self.reply(status, json.dumps(value).encode(), headers=headers)

    def error(self, status: int, code: Optional[str], message: str, headers: Optional[dict[str, str]] = None) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        extra["X-Error-Message"] = message
        self.json(status, {"error": message}, headers=extra)

    @property
    def base(self) -> str:
        return f"http://{self.headers.get('Host')}"

    def key(self, repo_id: str) -> str:
        """The repo's key in HubState.repos and its web path: "owner/name", "datasets/owner/name"."""
        return URL_PREFIXES[self.repo_type] + repo_id

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    # ---- access -----------------------------------------------------------------------------
    def user(self) -> tuple[bool, Optional[str]]:
        """(token valid or absent, user): an unknown token is answered 401 by the caller."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return True, None
        user = self.state.tokens.get(header[len("Bearer "):])
        return user is not None, user

    def readable(self, repo_id: str) -> Optional[Repo]:
        """The repo when this request may read it; else the error has been sent and None returned."""
        valid, user = self.user()
        if not valid:
            self.error(401, None, "Invalid credentials in Authorization header")
            return None
        repo = self.state.repos.get(self.key(repo_id))
        if repo is None or (repo.private and user is None):
            self.error(401 if user is None else 404, "RepoNotFound", "Repository not found")
            return None
        if repo.gated:
            self.error(401 if user is None else 403, "GatedRepo",
                       f"Access to {self.repo_type} {repo_id} is restricted and you are not in the authorized list.")
            return None
        return repo

    def writable(self, repo_id: str) -> Optional[Repo]:
        valid, user = self.user()
        if not valid or user is None:
            self.error(401, None, "Invalid credentials in Authorization header" if not valid else
                       "You must be authenticated to write")
            return None
        repo = self.state.repos.get(self.key(repo_id))
        if repo is None:
            self.error(404, "RepoNotFound", "Repository not found")
            return None
        if repo_id.split("/")[0] != user:
            self.error(403, None, "You don't have the rights to write to this repository")
            return None
        return repo

    def commit_of(self, repo: Repo, revision: str, headers: Optional[dict] = None) -> Optional[str]:
        oid = self.state.resolve(repo, revision)
        if oid is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}", headers)
        return oid

    # ---- routing ----------------------------------------------------------------------------
    def do_HEAD(self):  # noqa: N802 - http.server's names
        self.route()

    def do_GET(self):  # noqa: N802
        self.route()

    def do_POST(self):  # noqa: N802
        self.route()

    def route(self) -> None:
        split = urlsplit(self.path)
        parts = split.path.strip("/").split("/")
        query = parse_qs(split.query)
        try:
            with self.state.lock:
                self.dispatch(parts, query)
        except Exception as error:  # noqa: BLE001 - a bug here must show in the client, not hang it
            self.error(500, None, f"test hub server error: {type(error).__name__}: {error}")

    def dispatch(self, parts: list[str], query: dict) -> None:
        method = self.command
        if parts[:1] == ["_admin"]:
            return self.admin(parts[1:])
        if parts[:2] == ["api", "repos"] and parts[2:] == ["create"] and method == "POST":
            return self.create_repo()
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            return self.json(200, {"errors": [], "warnings": []})
        if parts[:1] == ["api"] and len(parts) >= 4 and parts[1] in API_TYPES:
            self.repo_type = API_TYPES[parts[1]]
            repo_id, rest = f"{unquote(parts[2])}/{unquote(parts[3])}", parts[4:]
            if not rest and method == "GET":
                return self.repo_info(repo_id, "main")
            if len(rest) >= 2 and rest[0] == "revision" and method == "GET":
                return self.repo_info(repo_id, unquote(rest[1]))
            if len(rest) >= 2 and rest[0] == "tree" and method == "GET":
                return self.tree(repo_id, unquote(rest[1]), unquote("/".join(rest[2:])),
                                 query.get("recursive", ["False"])[0].lower() in ("1", "true"))
            if len(rest) == 2 and rest[0] == "paths-info" and method == "POST":
                return self.paths_info(repo_id, unquote(rest[1]))
            if len(rest) == 2 and rest[0] == "preupload" and method == "POST":
                return self.preupload(repo_id, unquote(rest[1]))
            if len(rest) == 2 and rest[0] == "commit" and method == "POST":
                return self.commit(repo_id, unquote(rest[1]), query)
            if len(rest) == 2 and rest[0] == "branch" and method == "POST":
                return self.create_branch(repo_id, unquote(rest[1]))
        if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve" and method in ("GET", "HEAD"):
            self.repo_type = "dataset"
            return self.resolve_file(f"{unquote(parts[1])}/{unquote(parts[2])}", unquote(parts[4]),
                                     unquote("/".join(parts[5:])))
        if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            return self.resolve_file(f"{unquote(parts[0])}/{unquote(parts[1])}", unquote(parts[3]),
                                     unquote("/".join(parts[4:])))
        sys.stderr.write(f"hub: no route for {method} {self.path}\n")
        self.error(404, None, f"no route for {method} {self.path}")

    # ---- endpoints --------------------------------------------------------------------------
    def create_repo(self) -> None:
        valid, user = self.user()
        if not valid or user is None:
            return self.error(401, None, "Invalid credentials in Authorization header" if not valid else
                              "You must be authenticated to create a repo")
        payload = json.loads(self.body() or b"{}")
        if (payload.get("type") or "model") not in URL_PREFIXES:
            return self.error(400, None, "this test server holds model and dataset repos only")
        self.repo_type = payload.get("type") or "model"
        owner = payload.get("organization") or user
        repo_id = f"{owner}/{payload['name']}"
        if owner != user:
            return self.error(403, None, "You don't have the rights to create a repo in this namespace")
        if self.key(repo_id) in self.state.repos:
            return self.json(409, {"error": f"You already created this {self.repo_type} repo",
                                   "url": f"{self.base}/{self.key(repo_id)}"})
        private = payload.get("visibility") == "private" or payload.get("private") is True
        repo = self.state.repos[self.key(repo_id)] = Repo(private=private)
        self.state.commit(repo, "main", {".gitattributes": GITATTRIBUTES}, "initial commit")
        self.json(200, {"url": f"{self.base}/{self.key(repo_id)}", "name": repo_id,
                        "id": hashlib.md5(repo_id.encode()).hexdigest()})

    def repo_info(self, repo_id: str, revision: str) -> None:
        repo = self.readable(repo_id)
        if repo is None:
            return
        oid = self.commit_of(repo, revision)
        if oid is None:
            return
        commit = repo.commits[oid]
        info = {"id": repo_id, "author": repo_id.split("/")[0], "sha": oid,
                "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                "tags": [], "lastModified": commit["date"], "createdAt": repo.commits[repo.order[0]]["date"],
                "siblings": [{"rfilename": name} for name in sorted(commit["files"])]}
        if self.repo_type == "model":
            info["modelId"] = repo_id
        self.json(200, info)

    @staticmethod
    def entry(path: str, content: Optional[bytes]) -> dict:
        if content is None:
            return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "path": path}
        return {"type": "file", "oid": git_oid(content), "size": len(content), "path": path}

    def tree(self, repo_id: str, revision: str, path: str, recursive: bool) -> None:
        repo = self.readable(repo_id)
        oid = repo and self.commit_of(repo, revision)
        if oid is None:
            return
        files = repo.commits[oid]["files"]
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(name.startswith(prefix) for name in files):
            return self.error(404, "EntryNotFound", f"{path} does not exist on {revision}")
        entries: dict[str, Optional[bytes]] = {}
        for name, content in files.items():
            if not name.startswith(prefix):
                continue
            pieces = name[len(prefix):].split("/")
            for depth in range(1, len(pieces)):
                folder = prefix + "/".join(pieces[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, None)
            if recursive or len(pieces) == 1:
                entries[name] = content
        self.json(200, [self.entry(name, entries[name]) for name in sorted(entries)])

    def paths_info(self, repo_id: str, revision: str) -> None:
        form = parse_qs(self.body().decode())
        repo = self.readable(repo_id)
        oid = repo and self.commit_of(repo, revision)
        if oid is None:
            return
        files = repo.commits[oid]["files"]
        found = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in files:
                found.append(self.entry(path, files[path]))
            elif any(name.startswith(path + "/") for name in files):
                found.append(self.entry(path, None))
        self.json(200, found)

    def preupload(self, repo_id: str, revision: str) -> None:
        payload = json.loads(self.body() or b"{}")
        repo = self.writable(repo_id)
        oid = repo and self.commit_of(repo, revision)
        if oid is None:
            return
        files = repo.commits[oid]["files"]
        self.json(200, {"commitOid": oid, "files": [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_oid(files[f["path"]]) if f["path"] in files else None}
            for f in payload.get("files", [])]})

    def commit(self, repo_id: str, revision: str, query: dict) -> None:
        lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
        repo = self.writable(repo_id)
        if repo is None:
            return
        if query.get("create_pr"):
            return self.error(400, None, "this test server does not open pull requests")
        if revision not in repo.branches:
            return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = dict(repo.commits[repo.branches[revision]]["files"])
        summary = ""
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                if value.get("encoding") != "base64":
                    return self.error(400, None, f"unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {k: v for k, v in files.items() if not k.startswith(folder)}
            else:
                return self.error(400, None, f"this test server does not take {key!r} operations (no LFS)")
        oid = self.state.commit(repo, revision, files, summary)
        self.json(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.base}/{self.key(repo_id)}/commit/{oid}",
                        "hookOutput": ""})

    def create_branch(self, repo_id: str, branch: str) -> None:
        payload = json.loads(self.body() or b"{}")
        repo = self.writable(repo_id)
        if repo is None:
            return
        if branch in repo.branches:
            return self.error(409, None, f"Reference already exists: refs/heads/{branch}")
        oid = self.commit_of(repo, payload.get("startingPoint") or "main")
        if oid is None:
            return
        repo.branches[branch] = oid
        self.json(200, {})

    def resolve_file(self, repo_id: str, revision: str, path: str) -> None:
        repo = self.readable(repo_id)
        oid = repo and self.commit_of(repo, revision)
        if oid is None:
            return
        files = repo.commits[oid]["files"]
        if path not in files:
            return self.error(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": oid})
        content = files[path]
        if self.command == "GET" and repo.move is not None:
            repo.move[2] -= 1
            if repo.move[2] <= 0:
                repo.branches[repo.move[0]] = repo.move[1]
                repo.move = None
        self.reply(200, content, content_type="application/octet-stream",
                   headers={"X-Repo-Commit": oid, "ETag": f'"{git_oid(content)}"', "Accept-Ranges": "none"})

    # ---- for the tests ----------------------------------------------------------------------
    def admin(self, parts: list[str]) -> None:
        if parts == ["ping"]:
            return self.json(200, {"ok": True})
        if len(parts) in (3, 4) and parts[0] == "commits":  # commits/owner/name, commits/datasets/owner/name
            repo = self.state.repos.get("/".join(parts[1:]))
            if repo is None:
                return self.error(404, "RepoNotFound", "Repository not found")
            return self.json(200, [[oid, repo.commits[oid]["summary"]] for oid in repo.order])
        if len(parts) in (3, 4) and parts[0] == "gate" and self.command == "POST":
            repo = self.state.repos.get("/".join(parts[1:]))
            if repo is None:
                return self.error(404, "RepoNotFound", "Repository not found")
            repo.gated = True
            return self.json(200, {})
        if len(parts) in (3, 4) and parts[0] == "move" and self.command == "POST":
            repo = self.state.repos.get("/".join(parts[1:]))
            if repo is None:
                return self.error(404, "RepoNotFound", "Repository not found")
            query = parse_qs(urlsplit(self.path).query)
            repo.move = [query["branch"][0], query["to"][0], int(query["after"][0])]
            return self.json(200, {})
        self.error(404, None, "unknown admin route")


def serve(port: int, tokens: dict[str, str]) -> None:
    Handler.state = HubState(tokens)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


# --------------------------------------------------------------------------------------------
# The tests' handle on it
# --------------------------------------------------------------------------------------------
def hub_env(endpoint: str, hf_home, token: Optional[str] = None, offline: bool = False) -> dict[str, str]:
    """This process's environment with the Hub at `endpoint`, the cache under `hf_home` and only
    the HF_ variables given (none of the caller's own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_UPDATE_CHECK="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    if token is not None:
        env["HF_TOKEN"] = token
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@dataclass
class HubServer:
    process: subprocess.Popen
    endpoint: str
    tokens: dict[str, str]

    @classmethod
    def start(cls, tokens: Optional[dict[str, str]] = None, timeout_s: float = 20.0) -> "HubServer":
        tokens = dict(tokens or {"hf_test_writer": "alice"})
        port = _free_port()
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--port", str(port),
             "--tokens", ",".join(f"{t}={u}" for t, u in tokens.items())],
            stdout=subprocess.DEVNULL, stderr=None if os.environ.get("TEST_HUB_VERBOSE") else subprocess.DEVNULL)
        server = cls(process=process, endpoint=f"http://127.0.0.1:{port}", tokens=tokens)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                server.request("/_admin/ping")
                return server
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    server.stop()
                    raise RuntimeError(f"the test Hub server did not start on {server.endpoint}")
                time.sleep(0.1)

    def request(self, path: str, method: str = "GET", token: Optional[str] = None) -> bytes:
        """Plain urllib (not huggingface_hub): an independent view of what the server holds."""
        request = urllib.request.Request(self.endpoint + path, method=method, data=b"" if method == "POST" else None)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read()

    def env(self, hf_home, token: Optional[str] = "default", offline: bool = False) -> dict[str, str]:
        """The environment of a process that uses this server as its Hub (token "default": the
        first one; None: no token)."""
        return hub_env(self.endpoint, hf_home, next(iter(self.tokens)) if token == "default" else token, offline)

    def commits(self, repo_id: str, repo_type: str = "model") -> list[tuple[str, str]]:
        return [tuple(c) for c in json.loads(self.request(f"/_admin/commits/{URL_PREFIXES[repo_type]}{repo_id}"))]

    def file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        return self.request(f"/{URL_PREFIXES[repo_type]}{repo_id}/resolve/{revision}/{path}",
                            token=next(iter(self.tokens)))

    def gate(self, repo_id: str, repo_type: str = "model") -> None:
        self.request(f"/_admin/gate/{URL_PREFIXES[repo_type]}{repo_id}", method="POST")

    def move_after_downloads(self, repo_id: str, branch: str, oid: str, downloads: int,
                             repo_type: str = "model") -> None:
        """Point `branch` at commit `oid` once `downloads` more files of the repo have been sent, as
        if someone pushed while a client was downloading."""
        self.request(f"/_admin/move/{URL_PREFIXES[repo_type]}{repo_id}?branch={branch}&to={oid}&after={downloads}",
                     method="POST")

    def stop(self) -> None:
        from process_util import stop_process

        stop_process(self.process)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", default="", help="token=user,... (users own the repos under their name)")
    args = parser.parse_args()
    serve(args.port, dict(pair.split("=", 1) for pair in args.tokens.split(",") if pair))
