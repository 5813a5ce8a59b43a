"""Small helpers shared by the manifest tests."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path
from typing import Callable

from volumemanager.manifests.loader import FileResult, load_bytes


def load_text(text: str, name: str = "test.yaml") -> FileResult:
    """Parse manifest text as if it were a file called ``name``."""
    return load_bytes(textwrap.dedent(text).encode(), name, json_format=name.endswith(".json"))


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def write_atomic(path: Path, text: str) -> Path:
    """Write-temp-then-rename, the way config tools replace a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(textwrap.dedent(text))
    os.rename(tmp, path)
    return path


def wait_for(predicate: Callable[[], bool], timeout: float = 2.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def pod_yaml(name: str, namespace: str = "default", volumes: str = "") -> str:
    vols = volumes or "    - name: scratch\n      emptyDir: {}\n"
    return (
        "apiVersion: v1\nkind: Pod\n"
        f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"spec:\n  volumes:\n{vols}"
    )
