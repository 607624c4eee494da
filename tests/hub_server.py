"""A real Hugging Face Hub-compatible server on loopback, for tests: olah serving local git repos.

`olah` (PyPI `olah`, dev extra; 0.5.4 is known to work) runs in offline mode and serves every git repository under
`<mirrors>/models/<org>/<name>` as the Hub model repo `org/name`; its branch `main` is the default revision, and any
branch, tag or full commit sha works as `revision=`. `LocalHub.publish` writes those repos (plain git, no git-lfs:
olah serves blobs of any size straight from the object store). The `local_hub` fixture starts the server on a free
port and points the already-imported `huggingface_hub` (and so PEFT, which calls it) at it, with an empty Hugging Face
cache of its own.

Known olah quirks, asserted in tests/project/test_hub_server.py: a missing file at a branch or tag answers 401
`RepoNotFound` (`huggingface_hub.errors.RepositoryNotFoundError`), at a full commit sha 404 (`EntryNotFoundError`);
`file_exists` is False either way. `model_info(repo_id)` without `revision=` answers 401 too; with one it works.
A repo named like a route word (`org/tree`) confuses olah's API routes: pick other names.
Use a fresh repo id per test: the server and the HF cache are shared by the whole session.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

OLAH_REQUIREMENT = "olah==0.5.4"
STARTUP_TIMEOUT_S = 60.0
_REPO_TYPE_FOLDERS = {"model": "models", "dataset": "datasets", "space": "spaces"}

# Git must not pick up the user's or the system's settings (signing, hooks, excludes, autocrlf, default branch).
_GIT_ENV = {
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "local-hub",
    "GIT_AUTHOR_EMAIL": "local-hub@localhost",
    "GIT_COMMITTER_NAME": "local-hub",
    "GIT_COMMITTER_EMAIL": "local-hub@localhost",
    "GIT_TERMINAL_PROMPT": "0",
}


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        env={**os.environ, **_GIT_ENV},
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}:\n{result.stdout}{result.stderr}")
    return result.stdout.strip()


class LocalHub:
    """The repos olah serves. Every method works while the server runs: olah reads the repos on each request."""

    def __init__(self, endpoint: str, mirrors_path: Path, hf_home: Path):
        self.endpoint = endpoint
        self.mirrors_path = mirrors_path
        self.hf_home = hf_home
        self.hf_hub_cache = hf_home / "hub"

    def repo_path(self, repo_id: str, repo_type: str = "model") -> Path:
        org, sep, name = repo_id.partition("/")
        if not sep or not org or not name or "/" in name:
            raise ValueError(f"repo_id must be 'org/name', got {repo_id!r}")
        return self.mirrors_path / _REPO_TYPE_FOLDERS[repo_type] / org / name

    def publish(self, repo_id: str, folder: Path, message: str = "Publish", repo_type: str = "model") -> str:
        """Make the repo's `main` hold exactly the files of `folder` (a new commit, created with the repo if need be).

        Returns the new commit's sha.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise NotADirectoryError(folder)
        repo = self.repo_path(repo_id, repo_type)
        if not (repo / ".git").is_dir():
            repo.mkdir(parents=True, exist_ok=True)
            _git(repo, "init", "-q")
            # olah serves the default revision from branch `main` (a repo on `master` answers 401).
            _git(repo, "symbolic-ref", "HEAD", "refs/heads/main")
        for entry in repo.iterdir():
            if entry.name == ".git":
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        shutil.copytree(folder, repo, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git"))
        # Git takes a file whose size, times and inode match its index entry for unchanged without reading it, and
        # compares times in whole seconds: a file replaced within the second by one of the same size (a new profile
        # of the same shape) on a reused inode would keep the previous commit's content. Without an index, git
        # hashes every file.
        (repo / ".git" / "index").unlink(missing_ok=True)
        # --force: a .gitignore in `folder` must not drop files from the published repo.
        _git(repo, "add", "--all", "--force", ".")
        _git(repo, "commit", "-q", "--allow-empty", "--no-verify", "-m", message)
        return _git(repo, "rev-parse", "HEAD")

    def tag(self, repo_id: str, name: str, revision: str = "main", repo_type: str = "model") -> str:
        """Point tag `name` at `revision` (a sha, branch or tag; moved if it exists). Returns the commit sha."""
        repo = self.repo_path(repo_id, repo_type)
        _git(repo, "tag", "--force", name, f"{revision}^{{commit}}")
        return _git(repo, "rev-parse", f"{name}^{{commit}}")

    def branch(self, repo_id: str, name: str, revision: str = "main", repo_type: str = "model") -> str:
        """Point branch `name` at `revision` (created, or moved if it exists; not `main`). Returns the commit sha."""
        repo = self.repo_path(repo_id, repo_type)
        _git(repo, "branch", "--force", name, f"{revision}^{{commit}}")
        return _git(repo, "rev-parse", f"refs/heads/{name}")


def _require_tools() -> None:
    if importlib.util.find_spec("olah") is None:
        pytest.fail(
            f"The local Hub test server needs the `olah` package: `pip install {OLAH_REQUIREMENT}` "
            "(it is in the dev extras: `pip install -e '.[dev]'`).",
            pytrace=False,
        )
    if shutil.which("git") is None:
        pytest.fail("The local Hub test server needs the `git` executable on PATH.", pytrace=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _OlahServer:
    def __init__(self, root: Path, mirrors_path: Path):
        self.root = root
        self.mirrors_path = mirrors_path
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.log_path = root / "olah-stdout.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, attempts: int = 3) -> None:
        # The free port is only free when chosen: retry on another if something takes it before olah binds it.
        for attempt in range(attempts):
            self.port = _free_port()
            if self._start_once():
                return
            log = self.log()
            if "address already in use" not in log.lower() or attempt == attempts - 1:
                raise RuntimeError(f"olah did not come up on {self.endpoint}; its log ({self.log_path}):\n{log}")

    def _start_once(self) -> bool:
        config = self.root / "olah.toml"
        netloc = f"127.0.0.1:{self.port}"
        config.write_text(
            "[basic]\n"
            'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f'repos-path = "{(self.root / "repos").as_posix()}"\n'
            f'mirrors-path = ["{self.mirrors_path.as_posix()}"]\n'
            'mirror-scheme = "http"\n'
            f'mirror-netloc = "{netloc}"\n'
            f'mirror-lfs-netloc = "{netloc}"\n'
            "metadata-cache-ttl = 0\n"
            "[accessibility]\n"
            "offline = true\n"
        )
        # Not `python -m olah.server`: that would run the module as __main__, apart from the olah.server the app uses.
        command = [sys.executable, "-c", "from olah.server import cli; cli()"]
        command += ["--config", str(config), "--log-path", str(self.root / "logs")]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self._answers():
                return True
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"olah did not answer on {self.endpoint} within {STARTUP_TIMEOUT_S:.0f} s; its log ({self.log_path}):\n"
            f"{self.log()}"
        )

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/api/models/local-hub/probe/revision/main", timeout=2):
                return True
        except urllib.error.HTTPError:  # any HTTP answer (here 401 RepoNotFound) means the server is up
            return True
        except OSError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _point_hf_hub_at(mp: pytest.MonkeyPatch, endpoint: str, hf_home: Path) -> None:
    """Send huggingface_hub (already imported or not, in this process and in subprocesses) to `endpoint`.

    huggingface_hub reads its environment once, at import, into `huggingface_hub.constants`, and the module-level
    `HfApi` behind `huggingface_hub.file_exists`, `model_info`, ... copies `constants.ENDPOINT` when it is created;
    everything else (hf_hub_download, HfApi(), PEFT, transformers) reads `constants.*` at call time.
    """
    hub_cache = hf_home / "hub"
    hub_cache.mkdir(parents=True, exist_ok=True)
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    for name, value in env.items():
        mp.setenv(name, value)
    for name in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HUGGINGFACE_HUB_CACHE",
        "HUGGINGFACE_CO_STAGING",
    ):
        mp.delenv(name, raising=False)
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    mp.setenv("NO_PROXY", no_proxy)
    mp.setenv("no_proxy", no_proxy)

    from huggingface_hub import constants

    overrides = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
    }
    if hasattr(constants, "HF_URL_HOSTS"):
        overrides["HF_URL_HOSTS"] = frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"})
    for name, value in overrides.items():
        if hasattr(constants, name):
            mp.setattr(constants, name, value)

    import huggingface_hub.hf_api

    mp.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    cache_manager = sys.modules.get("huggingface_hub.utils._cache_manager")
    if cache_manager is not None and hasattr(cache_manager, "HF_HUB_CACHE"):
        mp.setattr(cache_manager, "HF_HUB_CACHE", str(hub_cache))


def _close_hf_session() -> None:
    # The shared HTTP client read the proxy environment when it was made: drop it so the next one reads ours.
    from huggingface_hub.utils import _http

    close = getattr(_http, "close_session", None) or getattr(_http, "reset_sessions", None)
    if close is not None:
        close()


@pytest.fixture(scope="session")
def local_hub(tmp_path_factory: pytest.TempPathFactory):
    """A running olah on loopback with huggingface_hub pointed at it and an empty HF cache; yields a `LocalHub`."""
    _require_tools()
    root = tmp_path_factory.mktemp("local_hub")
    mirrors = root / "mirrors"
    mirrors.mkdir()
    server = _OlahServer(root, mirrors)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            hf_home = root / "hf_home"
            _point_hf_hub_at(mp, server.endpoint, hf_home)
            _close_hf_session()
            try:
                yield LocalHub(server.endpoint, mirrors, hf_home)
            finally:
                _close_hf_session()
    finally:
        server.stop()
