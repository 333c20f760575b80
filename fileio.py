"""Files: atomic writes (a temporary name in the same directory, renamed on success; directories
swapped in whole), JSON and parquet reading and writing with one clear error per bad file,
checksums, and the prepared tables every phase loads.

Example:
    python -c "import fileio; fileio.write_json('/tmp/x.json', {'a': 1}); print(fileio.read_json('/tmp/x.json'))"
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from utils import UserError, log


def tmp_prefix(path: str | os.PathLike) -> str:
    """Name prefix of this suite's temporary files and directories for `path`: hidden, with the
    writing process id, so `remove_stale_tmp` can tell an orphan from a write in progress."""
    return f".{Path(path).name}.pid{os.getpid()}."


_TMP_RE = re.compile(r"^\..+\.pid(\d+)\..*\.tmp$")


def remove_stale_tmp(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files/directories this suite left in `directory` when a process was
    killed mid-write (names from `tmp_prefix` whose process no longer runs). Returns them."""
    import shutil
    gone = []
    for f in Path(directory).glob(".*.tmp"):
        m = _TMP_RE.match(f.name)
        if not m:
            continue
        pid = int(m.group(1))
        try:
            os.kill(pid, 0)
            continue  # its writer is alive (maybe another run): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(f, ignore_errors=True) if f.is_dir() else f.unlink(missing_ok=True)
        gone.append(f)
    if gone:
        log.info("removed %d temporary file(s) left by an interrupted run in %s", len(gone), directory)
    return gone


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it to `path` if the block succeeds,
    delete it if the block raises. Readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give outputs the usual umask permissions
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory next to `path`; when the block succeeds it replaces `path`
    (an existing directory is moved aside first and deleted after the swap), when it raises it is
    deleted. Readers see the old directory or the new one, never a half-written one."""
    import shutil
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=tmp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 directories
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=tmp_prefix(path) + "old.", suffix=".tmp", dir=path.parent))
            os.rmdir(old)
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_parquet(path: str | os.PathLike, df, row_group_size: int = 262_144) -> None:
    """Atomically write a DataFrame (or pyarrow Table) to parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")


@contextlib.contextmanager
def parquet_writer(path: str | os.PathLike, schema) -> Iterator[Any]:
    """A pyarrow ParquetWriter streaming row groups into a temporary file, renamed on success."""
    import pyarrow.parquet as pq
    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        try:
            yield writer
        finally:
            writer.close()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None,
                 hint: str = "re-run the step that wrote it"):
    """pandas.read_parquet with one clear error for a corrupt or truncated file or a missing column."""
    import pandas as pd
    import pyarrow.parquet as pq
    path = Path(path)
    try:
        names = pq.read_schema(path).names
    except FileNotFoundError:
        raise UserError(f"file not found: {path} ({hint})") from None
    except Exception as e:  # truncated, not parquet, unreadable
        raise UserError(f"cannot read {path} as parquet ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        f"the file is corrupt or truncated: {hint}") from None
    missing = [c for c in columns or [] if c not in names]
    if missing:
        raise UserError(f"{path} lacks column(s) {', '.join(missing)} (has: {', '.join(names)}); {hint}")
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as e:  # a corrupt row group found while reading
        raise UserError(f"cannot read {path} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                        f"the file is corrupt: {hint}") from None


def require_writable(directory: str | os.PathLike, option: str) -> Path:
    """Create `directory` if needed and prove it writable (before any heavy work), or raise one
    line; also removes the temporary files interrupted runs left there (`remove_stale_tmp`)."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=d, prefix=".write_test.", delete=True):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {d} ({option}): {e.strerror or e}; choose a writable directory") from None
    remove_stale_tmp(d)
    return d


def load_prepared(data_dir: str | os.PathLike, name: str, columns: list[str] | None = None):
    """A table written by prepare_training_data.py (`products_clean`, `ground_truth`, ...), with
    one clear error when it is missing, corrupt or lacks a column."""
    path = require_file(Path(data_dir) / f"{name}.parquet", name.replace("_", " "),
                        "run prepare_training_data.py first")
    return read_parquet(path, columns, "re-run prepare_training_data.py")


def load_catalog(data_dir: str | os.PathLike, columns: tuple[str, ...] = ("product_id", "product_text")):
    """products_clean.parquet: the catalog every index, encode and search refers to."""
    return load_prepared(data_dir, "products_clean", list(columns))


def require_file(path: Path, what: str, hint: str) -> Path:
    """Raise a UserError naming the missing file and what to do."""
    if not Path(path).is_file():
        raise UserError(f"{what} not found: {path} ({hint})")
    return Path(path)
