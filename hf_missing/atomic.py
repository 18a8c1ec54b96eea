"""Atomic folder writes: a save either replaces a folder's files whole or leaves the folder as it was."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, replaces: Callable[[str], bool]) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it takes ``target``'s place in one rename.

    Entries of an existing ``target`` are carried over into the new folder unless ``replaces(name)`` says the save
    owns that name (so a stale file of an earlier save never survives beside the new ones), which keeps what
    other tools put there (Trainer's checkpoints, logs, tokenizer files). On any error the temporary folder is
    removed and ``target`` is untouched.
    """
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.saving-", dir=target.parent))
    try:
        yield staging
        _swap_in(staging, target, replaces)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, target: Path, replaces: Callable[[str], bool]) -> None:
    if not target.exists():
        os.replace(staging, target)
        return
    if not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a folder; save into a folder path.")
    if Path.cwd().is_relative_to(target):  # renaming the working directory away would strand the process in it
        _replace_files(staging, target, replaces)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.replaced-", dir=target.parent))
    os.replace(target, retired)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(retired, target)
        raise
    for entry in retired.iterdir():  # until these moves end, the old folder (with everything) is kept as `retired`
        if not replaces(entry.name) and not (target / entry.name).exists():
            os.replace(entry, target / entry.name)
    shutil.rmtree(retired)


def _replace_files(staging: Path, target: Path, replaces: Callable[[str], bool]) -> None:
    """Fallback for a folder that cannot be renamed: each file is replaced atomically, stale owned files removed."""
    for entry in target.iterdir():
        if replaces(entry.name) and not (staging / entry.name).exists() and entry.is_file():
            entry.unlink()
    for entry in staging.iterdir():
        os.replace(entry, target / entry.name)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and one rename: readers see the old file or the new."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and one rename: readers see the old file or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
