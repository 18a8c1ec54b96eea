"""Finished training runs kept on disk, so a long multi-seed benchmark resumes where it stopped.

Each run is stored under a key with the settings it ran under (method options, epochs, missingness, data limits,
the stage-1 checkpoint's folder name). A stored run under other settings is an error, never silently reused or
mixed into a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text


class RunStore:
    """``runs.json`` in a results folder: key -> run summary with its ``settings``."""

    def __init__(self, path: Path, fresh: bool = False) -> None:
        """Read ``path`` if it exists, unless ``fresh`` (start empty; the file is replaced at the first ``put``)."""
        self.path = Path(path)
        self.runs: dict[str, dict[str, Any]] = (json.loads(self.path.read_text(encoding="utf-8"))
                                                if self.path.exists() and not fresh else {})

    def get(self, key: str, settings: dict[str, Any]) -> dict[str, Any] | None:
        """The run stored under ``key`` if it ran under ``settings``; None if there is none; an error if it ran under
        other settings."""
        run = self.runs.get(key)
        if run is None:
            return None
        if run.get("settings") != settings:
            raise ValueError(f"{self.path} holds {key!r} trained under {run.get('settings')}, not under the "
                             f"current {settings}; pass another --output-dir (or delete the file) rather than mixing "
                             "runs of different settings or stage-1 checkpoints in one table.")
        return run

    def put(self, key: str, run: dict[str, Any], settings: dict[str, Any]) -> None:
        """Store ``run`` under ``key`` with its ``settings`` and write the file atomically."""
        self.runs[key] = run | {"settings": settings}
        atomic_write_text(self.path, json.dumps(self.runs, indent=2))
