"""One manifest file -> its validated objects and its errors.

The file is read defensively, because anyone who can write to the manifest dir can drop
anything there: only regular files (a FIFO would block the daemon forever), at most
``MAX_FILE_BYTES``, and a symlink only when it resolves inside the manifest dir. YAML goes
through the C safe loader (no arbitrary tags; ~7x faster than the pure-Python one); ``.json``
files through ``json``.

Two kinds of failure are kept apart because the store treats them differently:

* the file as a whole cannot be used (unreadable, too big, not UTF-8, a YAML/JSON syntax
  error): one error for the file and ``parse_failed=True`` -- the file's previous objects stay;
* a document is invalid: an error naming the document and field, no object for that document,
  and its identity in ``failed_identities`` so the store can keep that object's last version.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml

from volumemanager.manifests.documents import parse_document
from volumemanager.manifests.models import ManifestError, ManifestObject

MAX_FILE_BYTES = 4 * 1024 * 1024  # manifests are small; this bounds memory and parse time
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
# Editor and tool temporaries that happen to live next to manifests; a half-saved buffer
# must never become desired state.
IGNORED_SUFFIXES = ("~", ".swp", ".swo", ".swx", ".tmp", ".bak", ".orig", ".dpkg-new", ".dpkg-old")
PROBLEM_MAX = 200  # parser messages are cut to this length
# Kubernetes manifests nest about 10 levels deep. A file nesting deeper than this is refused
# before libyaml's recursive (C) composer sees it; see _check_depth.
MAX_DEPTH = 100

try:
    _YamlLoader: Any = yaml.CSafeLoader
except AttributeError:  # PyYAML built without libyaml
    _YamlLoader = yaml.SafeLoader


def is_manifest_name(name: str) -> bool:
    """Whether a file called ``name`` (no directory part) is read as a manifest."""
    if not name or name.startswith(".") or name.startswith("#"):
        return False  # hidden files, emacs "#x#" autosaves and ".#x" lock links
    if name.endswith(IGNORED_SUFFIXES):
        return False
    return name.endswith(MANIFEST_SUFFIXES)


@dataclass(frozen=True)
class FileResult:
    """What one read of a file produced.

    ``parse_failed``: the file as a whole could not be used; keep what it held before.
    ``missing``: the file was not there (any more): its objects go.
    ``failed_identities``: (kind, namespace, name) of the documents that were rejected but
    whose identity could be read.
    """

    objects: tuple[ManifestObject, ...]
    errors: tuple[ManifestError, ...]
    parse_failed: bool = False
    missing: bool = False
    failed_identities: frozenset[tuple[str, str, str]] = field(default_factory=frozenset)


class _Refused(Exception):
    """The file cannot be used as a whole; the message says why (and is safe to show)."""


def load_file(path: str, display_name: str | None = None, root: str | None = None) -> FileResult:
    """Read and validate the manifest file at ``path``.

    ``display_name`` is how errors and origins name the file (default: ``path``); ``root`` is
    the manifest dir a symlink must resolve into (default: the file's directory).
    """
    name = display_name if display_name is not None else path
    try:
        data = read_manifest_bytes(path, root)
    except FileNotFoundError:
        return FileResult((), (ManifestError(name, None, None, "file does not exist"),),
                          parse_failed=True, missing=True)
    except _Refused as exc:
        return FileResult((), (ManifestError(name, None, None, str(exc)),), parse_failed=True)
    return load_bytes(data, name, json_format=path.endswith(".json"))


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY


def read_manifest_bytes(path: str, root: str | None = None) -> bytes:
    """The content of a manifest file, or ``_Refused`` / ``FileNotFoundError``.

    A file that is not a symlink, directly in ``root``, is opened with ``O_NOFOLLOW`` and read:
    nothing it names can be outside the manifest dir. A symlink gets the whole check (its
    target resolved and kept inside the dir, and the same file opened as checked); doing that
    for every file was ~12 path lookups each, a tenth of a restart at 2,000 manifests."""
    fd: int | None = None
    real: str | None = None
    top = root if root is not None else os.path.dirname(os.path.abspath(path))
    if os.path.dirname(os.path.abspath(path)) == os.path.abspath(top):
        try:
            fd = os.open(path, _OPEN_FLAGS | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # ELOOP: a symlink, checked below
                raise _Refused(f"cannot open: {os.strerror(exc.errno or errno.EIO)}") from None
    if fd is None:
        root_real = os.path.realpath(top)
        real = os.path.realpath(path)
        if os.path.commonpath([root_real, real]) != root_real:
            raise _Refused(f"refused: a symlink to {real!r}, outside the manifest dir {root_real!r}")
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise _Refused(f"cannot open: {os.strerror(exc.errno or errno.EIO)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused("refused: not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise _Refused(f"refused: {st.st_size} bytes, more than the limit of {MAX_FILE_BYTES}")
        if real is not None:
            try:  # the symlink may have been swapped between the check and the open
                real_st = os.stat(real)
            except OSError:
                real_st = None
            if real_st is None or (real_st.st_dev, real_st.st_ino) != (st.st_dev, st.st_ino):
                raise _Refused("changed while being opened; will be read again")
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_FILE_BYTES:
                raise _Refused(f"refused: more than the limit of {MAX_FILE_BYTES} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise _Refused(f"cannot read: {os.strerror(exc.errno or errno.EIO)}") from None
    finally:
        os.close(fd)


def load_bytes(data: bytes, display_name: str, json_format: bool = False) -> FileResult:
    """Parse and validate the content of one manifest file."""
    if not data.strip():
        # Zero bytes is what a file looks like between open(O_TRUNC) and the first write of a
        # non-atomic writer; reading it as "no objects" would tear down every volume it held.
        return _file_error(display_name, "file is empty (delete the file to remove its objects)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return _file_error(display_name, f"not valid UTF-8 (byte {exc.start})")
    try:
        docs = _parse_json(text) if json_format else _parse_yaml(text)
    except _Refused as exc:
        return _file_error(display_name, str(exc))
    objects: list[Any] = []
    errors: list[ManifestError] = []
    failed: set[tuple[str, str, str]] = set()
    for index, doc in enumerate(docs, start=1):
        try:
            result = parse_document(doc, display_name, index)
        except Exception as exc:  # a validator bug must not take the daemon down; report it
            errors.append(ManifestError(display_name, index, None,
                                        f"internal error while validating: {type(exc).__name__}"))
            continue
        if result.obj is not None:
            objects.append(result.obj)
        errors.extend(result.errors)
        if result.errors and result.identity is not None:
            failed.add(result.identity)
    return FileResult(tuple(objects), tuple(errors), failed_identities=frozenset(failed))


def _file_error(display_name: str, message: str) -> FileResult:
    return FileResult((), (ManifestError(display_name, None, None, message),), parse_failed=True)


def _nesting_bound(text: str) -> int:
    """An upper bound on how deeply ``text`` can nest: every collection YAML builds starts
    with at least one of these indicator characters (aliases never add depth)."""
    return sum(text.count(c) for c in "[{-?:")


def _check_depth(text: str) -> None:
    """Refuse a YAML stream that nests deeper than MAX_DEPTH, using the (iterative) event
    parser. Needed because libyaml's composer recurses in C: about 50,000 levels crash the
    whole process with a segmentation fault instead of raising."""
    depth = 0
    for event in yaml.parse(text, Loader=_YamlLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_DEPTH:
                mark = event.start_mark
                raise _Refused(
                    f"YAML nested more than {MAX_DEPTH} levels deep at line {mark.line + 1}, "
                    f"column {mark.column + 1}"
                )
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _parse_yaml(text: str) -> list[Any]:
    """All documents of a YAML stream; any problem refuses the whole file.

    The message is built from the parser's problem and position only: PyYAML's own ``str()``
    quotes the offending source line, which could be a Secret value.
    """
    try:
        if _nesting_bound(text) > MAX_DEPTH:
            _check_depth(text)
        return list(yaml.load_all(text, Loader=_YamlLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = (exc.problem or exc.context or "syntax error")[:PROBLEM_MAX]
        raise _Refused(f"YAML syntax error{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise _Refused(f"YAML error: {type(exc).__name__}") from None
    except RecursionError:
        raise _Refused("YAML error: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:  # e.g. a bad !!timestamp
        raise _Refused(f"YAML error: a value cannot be read ({type(exc).__name__})") from None


def _parse_json(text: str) -> list[Any]:
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as exc:
        raise _Refused(f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _Refused("JSON error: nested too deeply") from None
    except ValueError as exc:
        raise _Refused(f"JSON error: {type(exc).__name__}") from None
