"""Atomic writes: a reader (or a rerun after kill -9) never sees half a file or half a model directory; and the
checks, before any model loads, that a directory can take them."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from task_vector_opt.errors import UsageError

log = logging.getLogger(__name__)


def remove_dead_partials(final: Path) -> None:
    """Delete staging dirs left beside ``final`` by a process that was killed mid-save (its pid is gone)."""
    for leftover in final.parent.glob(f".{final.name}.partial-*"):
        pid = leftover.name.removeprefix(f".{final.name}.partial-").split("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("removing %s, left by a save that was interrupted", leftover)
            shutil.rmtree(leftover, ignore_errors=True)
        except PermissionError:
            pass


@contextmanager
def atomic_directory(final: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp dir beside ``final``; on success it replaces ``final`` in one rename."""
    final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))
    try:
        yield staging
        if final.exists():
            if not overwrite and any(final.iterdir()):
                raise UsageError("--output_dir", f"{final} appeared and is not empty; pass --overwrite_output_dir")
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def write_atomic(path: Path, content: str | bytes) -> None:
    """Write under a temporary name beside ``path``, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(content, bytes):
        tmp.write_bytes(content)
    else:
        tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def write_side_files(directory: Path, files: dict[str, Any]) -> None:
    """Write each file's content as is when it is str or bytes, as JSON otherwise; each under a temporary
    name, then renamed, so a reader never sees half a file."""
    for name, payload in files.items():
        if isinstance(payload, (str, bytes)):
            write_atomic(directory / name, payload)
        else:
            write_json_atomic(directory / name, payload)


def _cannot_create_files(path: Path) -> tuple[Path, str] | None:
    """(the nearest existing ancestor of ``path``, why no file can be created in it), or None when one can."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return probe, "it is a file, not a directory"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except PermissionError:
        return probe, "permission denied"
    except FileNotFoundError:  # the directory is there: its file system takes no new files (e.g. /proc)
        return probe, "its file system takes no new files"
    except OSError as exc:
        return probe, exc.strerror or str(exc)
    return None


def check_writable_dir(flag: str, value: str) -> None:
    """The nearest existing ancestor must be a directory we can really create files in."""
    refused = _cannot_create_files(Path(value).expanduser())
    if refused is not None:
        probe, reason = refused
        where = "" if str(probe) == value else f": no file can be created in {str(probe)!r}"
        raise UsageError(flag, f"{value!r} is not a writable directory{where} ({reason}); choose a directory you "
                               "can write to")


def check_new_file(flag: str, value: str, what: str) -> None:
    """``value`` names a file that can be created (or exists): not a directory, and its directory takes files."""
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(flag, f"{value!r} is a directory; give the path of {what}, e.g. "
                               f"{str(path / 'study.db')!r}")
    refused = _cannot_create_files(path.parent)
    if refused is not None:
        probe, reason = refused
        raise UsageError(flag, f"{value!r}: {what} cannot be created in {str(probe)!r} ({reason}); give a path in a "
                               "directory you can write to")


def check_output_dir(value: str, overwrite: bool, holds_saved_model: Callable[[Path], bool] | None = None) -> bool:
    """A directory the model can be saved to. A non-empty one is refused (unless ``overwrite``), except when
    ``holds_saved_model`` says it already holds this study's saved best model: then True (nothing left to do)."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError("--output_dir", f"{value!r} is a file; give a directory path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        if holds_saved_model is not None and holds_saved_model(path):
            return True
        raise UsageError("--output_dir", f"{value!r} exists and is not empty; choose a new directory or pass "
                                         "--overwrite_output_dir")
    check_writable_dir("--output_dir", value)
    return False
