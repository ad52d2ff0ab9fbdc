"""Where Ray's tasks read a study's shards from: the study's storage, when it has one.

Shards are written on the driver's node, under the study's work folder. On one machine (or
when the storage is the default folder under ``work_dir``) Ray Data reads them there. When the
study's storage is elsewhere (``--storage s3://...``, ``gs://...`` or a shared path), a node
that cannot see the driver's disk must still read them: each shard set is copied once to the
same place under the storage as under the work folder (``<storage>/shards/<task>/...``,
``<storage>/pretrain_shards/<key>``) and Ray Data streams it from there, wherever its tasks
land.

Remote file systems are pyarrow's (``pyarrow.fs.FileSystem.from_uri``), as Ray Tune's own
storage is: the same credentials and endpoint settings (``AWS_ENDPOINT_URL``, say) serve both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


def is_remote(uri: str) -> bool:
    """Whether ``uri`` names a file system other than the local one (``s3://``, ``gs://``)."""
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme != "file"


def local_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://")).resolve()


def holds_shards(storage: str | None, work_dir: Path) -> bool:
    """Whether shards should be read from ``storage`` rather than from ``work_dir``: storage
    was given and is not a folder of the work folder itself."""
    if not storage:
        return False
    if is_remote(storage):
        return True
    return not local_path(storage).is_relative_to(Path(work_dir).resolve())


@dataclass(frozen=True)
class ShardSource:
    """Where to read a set of shard files, as Ray Data is given them."""

    paths: list[str]  # as ``read_parquet`` takes them
    filesystem: Any  # a pyarrow file system, or None for local paths
    pinned: bool  # read on the driver's node (the files are only there)


def publish(folder: Path, storage: str, key: str, files: tuple[str, ...]) -> tuple[Any, str]:
    """Copy a shard set's ``files`` from ``folder`` to ``<storage>/<key>/`` (once: files
    already there at the same size are kept). The file system and the folder's path on it."""
    import pyarrow.fs as pafs

    base = storage if is_remote(storage) else str(local_path(storage))
    filesystem, root = pafs.FileSystem.from_uri(base.rstrip("/"))
    target = f"{root.rstrip('/')}/{key}"
    filesystem.create_dir(target, recursive=True)
    names = [f"{target}/{name}" for name in files]
    there = {
        info.path: info.size
        for info in filesystem.get_file_info(names)
        if info.type == pafs.FileType.File
    }
    for name in files:
        source = Path(folder) / name
        if there.get(f"{target}/{name}") == source.stat().st_size:
            continue
        with filesystem.open_output_stream(f"{target}/{name}") as out:
            out.write(source.read_bytes())
    return filesystem, target


def shard_source(
    folder: Path, files: tuple[str, ...], storage: str | None, work_dir: Path
) -> ShardSource:
    """Where Ray Data reads one shard set: from ``storage`` when it holds shards (copied there
    first), else from the driver's disk on the driver's node."""
    if not holds_shards(storage, work_dir):
        folder = Path(folder).resolve()
        return ShardSource([str(folder / name) for name in files], None, pinned=True)
    filesystem, target = publish(folder, str(storage), _key_of(folder, work_dir), files)
    return ShardSource([f"{target}/{name}" for name in files], filesystem, pinned=False)


def _key_of(folder: Path, work_dir: Path) -> str:
    """A shard set's place under the storage: its path below the work folder."""
    try:
        return Path(folder).resolve().relative_to(Path(work_dir).resolve()).as_posix()
    except ValueError:  # a shard set outside the work folder (tools, tests)
        return f"shards/{Path(folder).name}"


def storage_warning(storage: str | None, work_dir: Path, nodes: int) -> str | None:
    """What to tell a user whose cluster has other nodes but whose storage is only on the
    driver's disk: Ray Data's reads there may be unschedulable, and Tune on other nodes cannot
    save checkpoints where the driver reads them. None when all is well."""
    if nodes <= 1 or holds_shards(storage, work_dir):
        return None
    return (
        f"the cluster has {nodes} nodes but the study's storage is the driver's own folder "
        f"({storage or Path(work_dir) / 'ray_results'}): shards are read on the driver's node "
        "and checkpoints written there; give `--storage` an S3/GCS URI or a shared path so "
        "every node can reach them"
    )
