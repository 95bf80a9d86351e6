"""Safe file output: everything is written to a temporary name and renamed on success, so a
killed or failed stage never leaves a half-written file where a reader would find it."""
from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import PipelineError
from pipeline.schema import Table

TMP_SUFFIX = ".tmp"  # readers skip these: they are outputs still being written


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.
    Temporary files of the same output left by a killed process (its pid is gone) are removed."""
    path = Path(path)
    created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*{TMP_SUFFIX}"):
        pid = stale.name[len(path.name) + 2:-len(TMP_SUFFIX)]
        if pid.isdigit() and not pid_alive(int(pid)):
            remove(stale)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for d in created:  # a failed write (full disk, read-only) leaves no empty directory behind
            with suppress(OSError):
                d.rmdir()
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def writes_under(directory: Path, then: str):
    """Turn a failed write under `directory` into one line naming it and the space left there,
    then `then` (what to do about it). torch's serializer reports a full disk as "unexpected pos
    N vs M" and safetensors as its own error type: neither says where, nor is an OSError."""
    try:
        yield
    except Exception as e:
        serializer = "inline_container" in str(e) or "PytorchStreamWriter" in str(e) or \
            type(e).__name__ == "SafetensorError"
        if not (serializer or isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)):
            raise
        there = next(d for d in (directory, *directory.parents) if d.exists())
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise PipelineError(f"{directory}: writing failed with {shutil.disk_usage(there).free / 2**30:.2f} GiB "
                            f"free there ({first}); {then}") from e


def pid_alive(pid: int) -> bool:
    """Whether a process of this machine still runs (someone else's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove(path: Path) -> None:
    """A file or a directory tree, gone (already gone is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_dir(tmp: Path, final: Path) -> None:
    """Put a finished directory in place of `final`: the old one is moved aside first and removed
    after, so a kill at any moment leaves `final` whole (old or new) or, between the two renames,
    the old one beside it under a name the next call removes."""
    old = final.with_name(f".{final.name}.old{TMP_SUFFIX}")
    remove(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    remove(old)


def sql_quote(value: str | Path) -> str:
    """A SQL string literal for a path or value where DuckDB takes no parameter (a view's body, a SET):
    quotes doubled, so an apostrophe in a path is data, never the end of the string."""
    return "'" + str(value).replace("'", "''") + "'"


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_table(spec: Table, table: pa.Table, path: str | Path, **parquet_options) -> None:
    spec.validate(table.schema, f"writing {path}")
    with atomic_path(path) as tmp:
        pq.write_table(table.select(spec.names), tmp, compression="zstd", **parquet_options)


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """A Parquet file, or a one-line error naming it when it is corrupt or not Parquet at all."""
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise PipelineError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None


def open_table(spec: Table, path: str | Path) -> pq.ParquetFile:
    """A Parquet file checked against its table's schema, nulls in columns the schema declares
    non-null included (a foreign writer may not enforce them); only the footer is read."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: missing (has the stage that writes it run?)")
    f = open_parquet(path)
    spec.validate(f.schema_arrow, str(path))
    leaves = {f.schema.column(i).path: i for i in range(f.metadata.num_columns)}
    for c in spec.columns:
        if c.nullable or c.name not in leaves:  # nested columns have leaves of other names
            continue
        stats = (f.metadata.row_group(g).column(leaves[c.name]).statistics for g in range(f.metadata.num_row_groups))
        nulls = sum(s.null_count for s in stats if s is not None and s.has_null_count)
        if nulls:
            raise PipelineError(f"{path}: column '{c.name}' holds {nulls} nulls; the {spec.name} schema allows none")
    return f


def read_table(spec: Table, path: str | Path) -> pa.Table:
    return open_table(spec, path).read()
