"""A run folder's lifecycle: its name, its making, one process at a time, its data, its end.

    new run:  RunFolder.new(...)      name checked, nothing made yet
              .make(config)           folder made and locked, config.yaml written
    resume:   RunFolder.existing(...) name checked, folder locked, config.yaml found
    both:     .check_data(...)        the data's fingerprint saved, or compared on a resume
              .trials_started()       from here on a failure keeps the folder (it can resume)
              .close(failed)          a start that failed removes what it made; the lock goes

Every refusal is a ConfigError (exit status 2), raised before anything is written or after
what was written is removed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
from pathlib import Path

from trainable.files import atomic_write
from tuning.config import ConfigError, ExperimentConfig
from tuning.results.tables import write_config

NAME = re.compile(r"^[A-Za-z0-9._-]+$")
LOCK_FILE = ".lock"  # held with flock for the whole run; holds the holder's pid and host
DATA_FILE = "data.json"  # the fingerprint of the data the run started on


def check_name(name: str) -> str:
    """`name` if it names a folder inside --results-dir and nothing else; else ConfigError."""
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"--name {name!r} must be letters, digits, '.', '_' or '-' only (not '.' or '..'): "
            "it names a folder inside --results-dir and a path in --storage"
        )
    return name


class RunFolder:
    """One run's folder `<results>/<name>/`, made by this process (`made`) or resumed."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.resume = resume
        self.made = False  # this process created the folder: a failed start removes it
        self.started = False  # a trial started: the folder is worth keeping
        self._lock: int | None = None

    @classmethod
    def new(cls, results: Path, name: str) -> RunFolder:
        """A new run's folder, checked but not made yet (bad input must write nothing)."""
        folder = cls(results / check_name(name), resume=False)
        if folder.path.exists():
            raise ConfigError(
                f"run folder {folder.path} already exists; choose another --name, "
                "or add --resume to continue that run"
            )
        return folder

    @classmethod
    def existing(cls, results: Path, name: str | None) -> RunFolder:
        """A run to resume, locked at once: nothing of it is read while another run writes."""
        if name is None:
            raise ConfigError("--resume needs the --name of the run to continue")
        folder = cls(results / check_name(name), resume=True)
        if not (folder.path / "config.yaml").is_file():
            raise ConfigError(
                f"nothing to resume: {folder.path / 'config.yaml'} does not exist; "
                "check --results-dir/--name"
            )
        folder.lock()
        return folder

    def make(self, config: ExperimentConfig) -> None:
        """Create the folder (refused if another process made it first), lock it, and write
        config.yaml first: a run killed from here on can be resumed from it."""
        results = self.path.parent
        try:
            results.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create --results-dir {results}: {err.strerror}") from None
        if not os.access(results, os.W_OK | os.X_OK):
            raise ConfigError(f"--results-dir {results} is not writable; pick one you can write")
        try:
            self.path.mkdir()  # atomic: of two runs started under one name, one gets it
        except FileExistsError:
            raise ConfigError(
                f"run folder {self.path} already exists; choose another --name, "
                "or add --resume to continue that run"
            ) from None
        self.made = True
        self.lock()
        write_config(self.path, config)

    def lock(self) -> None:
        """Hold an exclusive lock on the folder until `close` (or the process ends: the kernel
        drops a dead process's flock, so a killed run leaves no stale lock)."""
        try:
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:  # e.g. a run folder copied read-only
            raise ConfigError(
                f"cannot lock run folder {self.path} ({err.strerror}); a run needs to write there"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"cannot lock run folder {self.path}: {err.strerror}") from None
            raise ConfigError(
                f"run folder {self.path} is in use by {holder}; wait for that run to end (or "
                "stop it) before resuming it, or choose another --name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock = fd

    def check_data(self, fingerprint: str, source: str) -> None:
        """Save the data's fingerprint at the start; a resume on other data is refused."""
        path = self.path / DATA_FILE
        mine = {"fingerprint": fingerprint, "source": source}
        if self.resume and path.exists():
            saved = json.loads(path.read_text())
            if saved["fingerprint"] != fingerprint:
                raise ConfigError(
                    f"run {self.path.name} started on {saved['source']} (data fingerprint "
                    f"{saved['fingerprint']}), but --resume found {source} (fingerprint "
                    f"{fingerprint}): other data. Resume with --data-dir pointing at the "
                    "run's own data, or start a new run"
                )
            return
        atomic_write(path, lambda p: p.write_text(json.dumps(mine) + "\n"))

    def trials_started(self) -> None:
        self.started = True

    def close(self, failed: bool = False) -> None:
        """Release the lock; a start that `failed` before any trial removes the folder it made
        (which could neither be reused, as it exists, nor resumed, as Tune saved nothing)."""
        if failed and self.made and not self.started:
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.close(failed=kind is not None)

    def resume_command(self, script: str, address: str | None, dashboard: bool) -> str:
        """The exact command that continues this run."""
        command = ["python", script, "--resume", "--name", self.path.name]
        command += ["--results-dir", str(self.path.parent)]
        if address:
            command += ["--address", address]
        if not dashboard:
            command.append("--no-dashboard")
        return shlex.join(command)
