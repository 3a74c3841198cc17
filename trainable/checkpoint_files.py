"""What a trial's checkpoint folder may hold before anything in it is read.

Ray's restore of a class trainable unpickles `_dict_checkpoint.pkl` when a checkpoint folder
holds one, before `load_checkpoint` sees the folder: a file dropped into the storage would run
as code in a worker. This project writes only `state.pt` (loaded with `weights_only=True`).
"""

from __future__ import annotations

import pyarrow.fs

# state.pt: the trainable's own; .metadata.json: Ray's checkpoint metadata (JSON, never code).
EXPECTED = frozenset({"state.pt", ".metadata.json"})


class ForeignCheckpointFile(RuntimeError):
    """A checkpoint folder holds a file this project did not write; restoring is refused."""


def check_checkpoint_folder(checkpoint: object) -> None:
    """ForeignCheckpointFile naming every file or folder in the checkpoint folder that the
    project did not write. `checkpoint`: what Tune's `Trainable.restore` takes (a folder path,
    a `tune.Checkpoint`, or a training result holding one)."""
    checkpoint = getattr(checkpoint, "checkpoint", checkpoint)
    if isinstance(checkpoint, str):
        fs, path = pyarrow.fs.LocalFileSystem(), checkpoint
    else:
        fs, path = checkpoint.filesystem, checkpoint.path
    listing = fs.get_file_info(pyarrow.fs.FileSelector(path, recursive=True))
    foreign = sorted(info.path for info in listing if info.base_name not in EXPECTED)
    if foreign:
        raise ForeignCheckpointFile(
            f"refusing to restore from checkpoint {path}: it holds files this project did not "
            f"write ({', '.join(foreign)}), and Ray would unpickle some of them. Remove them, and "
            "make the run's storage writable only by trusted users"
        )
