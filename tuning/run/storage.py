"""Where Tune keeps trial state and checkpoints: the run folder, a shared path, or a URI.

`run.storage` unset: Tune's folder is `<run folder>/ray`, as on one machine. Set: it is
`<storage>/<run name>/ray`, on a path every node mounts or a URI pyarrow's filesystems
understand (`s3://bucket/runs`, `gs://bucket/runs`, `file:///mnt/nfs/runs`); the driver still
writes the tables and config.yaml to the run folder.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow
import pyarrow.fs
from ray import tune

from tuning.config import ConfigError

TUNE_FOLDER = "ray"  # Tune's experiment folder inside the run's storage folder
STORAGE_HINT = (
    "pass --storage with a folder every node mounts at the same path (e.g. NFS: "
    "/mnt/shared/runs) or an object-store URI (s3://bucket/runs, gs://bucket/runs)"
)


def is_uri(storage: str) -> bool:
    return "://" in storage


def join(base: str, *parts: str) -> str:
    """`base/part/...` for a path or a URI, keeping a URI's query (`?region=...`) at the end."""
    if not is_uri(base):
        return str(Path(base, *parts))
    scheme, netloc, path, query, fragment = urlsplit(base)
    return urlunsplit((scheme, netloc, "/".join([path.rstrip("/"), *parts]), query, fragment))


def tune_storage(storage: str | None, run_dir: Path) -> tuple[str, str]:
    """Tune's `storage_path` and experiment `name`: its folder is `storage_path/name`."""
    if storage is None:
        return str(run_dir.resolve()), TUNE_FOLDER
    return join(storage, run_dir.name), TUNE_FOLDER


def tune_location(storage: str | None, run_dir: Path) -> str:
    """The path or URI of Tune's experiment folder for this run (what `--resume` restores)."""
    return join(*tune_storage(storage, run_dir))


def can_resume(storage: str | None, run_dir: Path) -> bool:
    """Whether Tune saved a run's state there for `--resume` to restore."""
    return tune.Tuner.can_restore(tune_location(storage, run_dir))


def filesystem(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem and the path on it; ConfigError when pyarrow cannot open it."""
    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except (pyarrow.ArrowException, OSError, ValueError) as err:
        reason = str(err).splitlines()[0]  # pyarrow's HDFS error lists every JVM path it tried
        raise ConfigError(
            f"storage {location} cannot be opened: {reason}; {STORAGE_HINT}"
        ) from None


def local_path(location: str) -> str | None:
    """The folder on this machine's filesystem behind `location`, or None for remote storage."""
    if not is_uri(location):
        return location
    parts = urlsplit(location)  # not pyarrow: opening s3:// asks the network for the region
    return parts.path if parts.scheme == "file" else None


def exists(location: str) -> bool:
    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def prepare_storage(storage: str, run_dir: Path, resume: bool) -> None:
    """Check `--storage` before anything starts: reachable, writable, and not already this run's.

    ConfigError for anything the user must fix. Creates the storage folder when it is local.
    """
    fs, path = filesystem(storage)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create --storage {storage}: {err.strerror}") from None
    location = tune_location(storage, run_dir)
    if not resume and exists(location):
        raise ConfigError(
            f"{location} already holds Tune's state of a run named {run_dir.name}; choose "
            "another --name, or add --resume to continue that run"
        )
