"""Parse ``/proc/self/mountinfo`` and answer questions about the mount table.

We parse mountinfo ourselves instead of using psutil or ``findmnt`` because the reconciler
needs what only mountinfo has: mount and parent IDs (to order stacked mounts), major:minor
and the bind *root* (to find bind mounts of the same device, like k8s ``GetMountRefs``) and
the propagation tags. Exec'ing ``findmnt`` costs 3-25x more per read.

Format of one line (proc(5)); fields are separated by single spaces, and the kernel escapes
space, tab, newline and backslash in paths as 3-digit octal (``\\040`` ...)::

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2) (3)  (4)   (5)     (6)       (7)    (8) (9)   (10)         (11)

(7) is zero or more ``tag[:value]`` optional fields, terminated by the lone ``-`` (8).
"""

from __future__ import annotations

import bisect
import errno
import os
import re
import select
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

DEFAULT_MOUNTINFO = "/proc/self/mountinfo"

# The kernel escapes these characters in paths (fs/proc_namespace.c: " \t\n\\"); we escape the
# same set when writing, and decode any 3-digit octal escape when reading.
_ESCAPED_CHARS = " \t\n\\"
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


class MountInfoParseError(ValueError):
    """A mountinfo line could not be parsed.

    The message names the line number and what was wrong but never the line itself: mount
    sources and options can carry secrets (CIFS passwords, tokens in FUSE sources).
    """

    def __init__(self, line_number: int, reason: str) -> None:
        super().__init__(f"mountinfo line {line_number}: {reason}")
        self.line_number = line_number
        self.reason = reason


def unescape_field(field: str) -> str:
    """Decode the kernel's octal escapes (``\\040`` -> space) in one mountinfo field.

    Works on bytes so that escapes of non-ASCII bytes and raw non-UTF-8 names both survive
    (the result uses the filesystem encoding with surrogateescape, like ``os.fsdecode``).
    """
    if "\\" not in field:
        return field
    raw = _OCTAL_ESCAPE.sub(lambda m: bytes((int(m.group(1), 8) & 0xFF,)), os.fsencode(field))
    return os.fsdecode(raw)


def escape_field(value: str) -> str:
    """Escape a path the way the kernel does in mountinfo (inverse of `unescape_field`)."""
    if not any(c in value for c in _ESCAPED_CHARS):
        return value
    return "".join(f"\\{ord(c):03o}" if c in _ESCAPED_CHARS else c for c in value)


def split_options(field: str) -> tuple[str, ...]:
    """Split a comma-separated option field, keeping commas inside double quotes.

    SELinux contexts (``context="system_u:object_r:container_file_t:s0:c1,c2"``) contain commas
    inside quotes; a naive split would cut them in half.
    """
    if not field:
        return ()
    if '"' not in field:
        return tuple(field.split(","))
    out: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in field:
        if ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == "," and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
    out.append("".join(current))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Propagation:
    """The propagation state of a mount, from mountinfo's optional fields.

    ``shared`` is the peer group this mount shares events with, ``master`` the peer group it
    receives events from (a slave), ``propagate_from`` the closest dominant peer group visible
    in this namespace, ``unbindable`` whether it may not be bind-mounted.
    """

    shared: int | None = None
    master: int | None = None
    propagate_from: int | None = None
    unbindable: bool = False

    @property
    def kind(self) -> str:
        """``shared``, ``slave``, ``shared,slave``, ``unbindable`` or ``private``."""
        if self.unbindable:
            return "unbindable"
        kinds = [k for k, v in (("shared", self.shared), ("slave", self.master)) if v is not None]
        return ",".join(kinds) if kinds else "private"

    @classmethod
    def from_fields(cls, fields: Iterable[str]) -> Propagation:
        shared = master = propagate_from = None
        unbindable = False
        for tag in fields:
            name, _, value = tag.partition(":")
            try:
                number = int(value) if value else None
            except ValueError:
                continue  # an optional field we do not know; the kernel may add more
            if name == "shared":
                shared = number
            elif name == "master":
                master = number
            elif name == "propagate_from":
                propagate_from = number
            elif name == "unbindable":
                unbindable = True
        return cls(shared, master, propagate_from, unbindable)

    def __str__(self) -> str:
        parts = []
        if self.shared is not None:
            parts.append(f"shared:{self.shared}")
        if self.master is not None:
            parts.append(f"master:{self.master}")
        if self.propagate_from is not None:
            parts.append(f"propagate_from:{self.propagate_from}")
        if self.unbindable:
            parts.append("unbindable")
        return " ".join(parts) or "private"


@dataclass(frozen=True, slots=True)
class MountInfo:
    """One line of mountinfo, with paths unescaped.

    ``mount_options`` are the per-mount options (ro, nosuid, ...); ``super_options`` those of
    the superblock (may include sensitive data, so never log them wholesale).
    """

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mount_point: str
    mount_options: tuple[str, ...]
    optional_fields: tuple[str, ...]
    fs_type: str
    source: str
    super_options: tuple[str, ...]

    @property
    def propagation(self) -> Propagation:
        return Propagation.from_fields(self.optional_fields)

    @property
    def read_only(self) -> bool:
        """True when this mount (not necessarily the superblock) is read-only."""
        return "ro" in self.mount_options

    @property
    def device(self) -> tuple[int, int]:
        return (self.major, self.minor)

    def to_line(self) -> str:
        """Format as a mountinfo line (used by tests and fakes; the inverse of parsing)."""
        optional = " ".join(self.optional_fields)
        return " ".join(
            [
                str(self.mount_id),
                str(self.parent_id),
                f"{self.major}:{self.minor}",
                escape_field(self.root),
                escape_field(self.mount_point),
                ",".join(self.mount_options),
            ]
            + ([optional] if optional else [])
            + [
                "-",
                escape_field(self.fs_type),
                escape_field(self.source),
                ",".join(self.super_options),
            ]
        )


def _parse_line(line: str, line_number: int) -> MountInfo:
    fields = line.split(" ")
    # Minimum: 6 fixed fields, the separator, and 3 after it.
    if len(fields) < 10:
        raise MountInfoParseError(line_number, f"expected at least 10 fields, found {len(fields)}")
    try:
        sep = fields.index("-", 6)
    except ValueError:
        raise MountInfoParseError(line_number, "no ' - ' separator after the optional fields") from None
    tail = fields[sep + 1 :]
    if len(tail) != 3:
        raise MountInfoParseError(
            line_number, f"expected 3 fields after the separator, found {len(tail)}"
        )
    try:
        mount_id = int(fields[0])
        parent_id = int(fields[1])
        major_s, colon, minor_s = fields[2].partition(":")
        if not colon:
            raise ValueError("major:minor")
        major, minor = int(major_s), int(minor_s)
    except ValueError:
        raise MountInfoParseError(line_number, "mount ID, parent ID or major:minor is not numeric") from None
    root = unescape_field(fields[3])
    mount_point = unescape_field(fields[4])
    # The root need not be a path (nsfs shows "net:[4026532177]"), the mount point always is.
    if not mount_point.startswith("/"):
        raise MountInfoParseError(line_number, "mount point is not an absolute path")
    return MountInfo(
        mount_id=mount_id,
        parent_id=parent_id,
        major=major,
        minor=minor,
        root=root,
        mount_point=mount_point,
        mount_options=split_options(fields[5]),
        optional_fields=tuple(f for f in fields[6:sep] if f),
        fs_type=unescape_field(tail[0]),
        source=unescape_field(tail[1]),
        super_options=split_options(tail[2]),
    )


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Parse the whole text of a mountinfo file; blank lines are skipped.

    Raises `MountInfoParseError` (naming the line number, not the content) on a malformed line.
    """
    mounts = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line:
            mounts.append(_parse_line(line, number))
    return mounts


def read_mountinfo(path: str = DEFAULT_MOUNTINFO) -> list[MountInfo]:
    """Read and parse a mountinfo file in one read (the kernel generates it consistently
    enough on 5.8+ kernels; older kernels could drop lines under concurrent changes)."""
    with open(path, "rb") as f:
        data = f.read()
    return parse_mountinfo(os.fsdecode(data))


def _norm(path: str) -> str:
    """Normalise a path lexically (no symlink resolution: that is the caller's decision)."""
    if not path:
        raise ValueError("empty path")
    path = os.path.normpath(path)
    # normpath keeps a leading "//" (POSIX allows it to be special); Linux does not care.
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    return path


class MountTable:
    """An immutable snapshot of the mount table with indexed lookups.

    Build it once per reconciler pass (`MountTable.read()`), then ask many questions: the
    lookups are dict (O(1)) or bisect (O(log n)) based so that a pass over thousands of
    volumes does not re-scan thousands of mounts each time.
    """

    __slots__ = ("_mounts", "_by_point", "_points_sorted", "_by_dev_root", "_index")

    def __init__(self, mounts: Iterable[MountInfo]) -> None:
        self._mounts: tuple[MountInfo, ...] = tuple(mounts)
        self._index = {id(m): i for i, m in enumerate(self._mounts)}
        groups: dict[str, list[MountInfo]] = {}
        by_dev_root: dict[tuple[int, int, str], list[MountInfo]] = {}
        for m in self._mounts:
            groups.setdefault(m.mount_point, []).append(m)
            by_dev_root.setdefault((m.major, m.minor, m.root), []).append(m)
        self._by_point = {p: tuple(_stack_order(ms)) for p, ms in groups.items()}
        self._points_sorted = sorted(self._by_point)
        self._by_dev_root = {k: tuple(v) for k, v in by_dev_root.items()}

    @classmethod
    def read(cls, path: str = DEFAULT_MOUNTINFO) -> MountTable:
        return cls(read_mountinfo(path))

    @classmethod
    def parse(cls, text: str) -> MountTable:
        return cls(parse_mountinfo(text))

    @property
    def mounts(self) -> list[MountInfo]:
        """All mounts, in mountinfo order (a copy: the snapshot itself is immutable)."""
        return list(self._mounts)

    def __len__(self) -> int:
        return len(self._mounts)

    def __iter__(self) -> Iterator[MountInfo]:
        return iter(self._mounts)

    def at(self, path: str) -> list[MountInfo]:
        """All mounts whose mount point is exactly `path`, bottom first (top = last = visible)."""
        return list(self._by_point.get(_norm(path), ()))

    def top(self, path: str) -> MountInfo | None:
        """The visible (topmost) mount at `path`, or None."""
        stack = self._by_point.get(_norm(path))
        return stack[-1] if stack else None

    def is_mount_point(self, path: str) -> bool:
        """Whether something is mounted exactly at `path` (lexically normalised, no symlinks)."""
        return _norm(path) in self._by_point

    def under(self, prefix: str) -> list[MountInfo]:
        """Mounts whose mount point is `prefix` or below it, component-wise, in mountinfo order.

        ``/a/b`` is not under ``/a/bc``. Reversing the result gives a safe unmount order
        (children were mounted after their parents).
        """
        prefix = _norm(prefix)
        points = self._points_sorted
        if prefix == "/":
            selected = points
        else:
            selected = list(self._by_point.keys() & {prefix})
            start = prefix + "/"
            # Every string starting with "prefix/" sorts between "prefix/" and "prefix0"
            # ("0" is the character after "/").
            lo = bisect.bisect_left(points, start)
            hi = bisect.bisect_left(points, prefix + "0")
            selected.extend(points[lo:hi])
        found = [m for p in selected for m in self._by_point[p]]
        found.sort(key=lambda m: self._index[id(m)])
        return found

    def refs(self, path: str) -> list[str]:
        """Other mount points showing the same thing as the mount at `path`.

        Same major:minor *and* same root as the top mount at `path`, excluding `path`
        itself, like k8s ``GetMountRefs``: used to refuse unstaging a device while pods still
        have it bind-mounted. Empty when `path` is not a mount point.
        """
        path = _norm(path)
        top = self.top(path)
        if top is None:
            return []
        seen: dict[str, None] = {}
        for m in self._by_dev_root.get((top.major, top.minor, top.root), ()):
            if m.mount_point != path:
                seen.setdefault(m.mount_point, None)
        return list(seen)

    def by_source(self, source: str) -> list[MountInfo]:
        """Mounts whose source field equals `source` (e.g. a device path), in mountinfo order."""
        return [m for m in self._mounts if m.source == source]

    def by_device(self, major: int, minor: int) -> list[MountInfo]:
        """Mounts of the filesystem on device major:minor, in mountinfo order."""
        return [m for m in self._mounts if m.major == major and m.minor == minor]


def _stack_order(mounts: Sequence[MountInfo]) -> list[MountInfo]:
    """Order mounts sharing one mount point bottom first.

    A mount stacked on top of another has the one below as its parent. Follow that chain from
    the mount whose parent is not in the group; fall back to mountinfo order (which is mount
    order) if the chain is broken, e.g. after ``mount --move``.
    """
    if len(mounts) == 1:
        return list(mounts)
    ids = {m.mount_id for m in mounts}
    children: dict[int, list[MountInfo]] = {}
    bottoms = []
    for m in mounts:
        if m.parent_id in ids and m.parent_id != m.mount_id:
            children.setdefault(m.parent_id, []).append(m)
        else:
            bottoms.append(m)
    if len(bottoms) != 1:
        return list(mounts)
    chain = [bottoms[0]]
    while len(chain) < len(mounts):
        nxt = children.get(chain[-1].mount_id)
        if not nxt or len(nxt) != 1:
            return list(mounts)
        chain.append(nxt[0])
    return chain


# How the kernel tells us the mount table changed: poll() on an open mountinfo fd reports
# POLLPRI|POLLERR once per change event; reading the file again re-arms it.
_WATCH_EVENTS = select.POLLPRI | select.POLLERR


def _lines_under(data: bytes, under: str) -> list[bytes]:
    point = os.fsencode(escape_field(_norm(under)))
    exact, below = b" " + point + b" ", b" " + point.rstrip(b"/") + b"/"
    return [line for line in data.split(b"\n") if line and (exact in line or below in line)]


def read_lines_under(under: str, path: str = DEFAULT_MOUNTINFO) -> list[bytes]:
    """The raw lines of `path` that may be mounts at or below `under` (see
    ``MountInfoWatcher.lines_under``), for ``table_of_lines`` or ``mount_point_of``."""
    with open(path, "rb") as f:
        return _lines_under(f.read(), under)


def mount_point_of(line: bytes) -> str:
    """The mount point of one raw mountinfo line, without parsing the rest of it."""
    fields = line.split(b" ", 5)
    if len(fields) < 6:
        raise MountInfoParseError(0, f"expected at least 10 fields, found {len(fields)}")
    return unescape_field(os.fsdecode(fields[4]))


def table_of_lines(lines: Iterable[bytes], under: str) -> MountTable:
    """The mounts at or below `under` among raw mountinfo lines (``MountInfoWatcher.lines_under``)."""
    mounts = []
    top = _norm(under)
    for number, line in enumerate(lines, start=1):
        m = _parse_line(os.fsdecode(line), number)
        if m.mount_point == top or m.mount_point.startswith(top.rstrip("/") + "/"):
            mounts.append(m)
    return MountTable(mounts)


def read_table_of_majors(majors: Collection[int], path: str = DEFAULT_MOUNTINFO) -> MountTable:
    """The mounts of devices with these major numbers: only those lines are parsed, found by
    a byte test on the device field. A check before a format or a mount asks "who mounts this
    device (or a partition of it)?" of a table that, on a node with 10,000 volumes, is mostly
    others' tmpfs (~13 us a parsed line)."""
    with open(path, "rb") as f:
        data = f.read()
    wanted = tuple(b"%d:" % m for m in majors)
    lines = []
    for line in data.split(b"\n"):
        fields = line.split(b" ", 3)
        if len(fields) > 3 and fields[2].startswith(wanted):
            lines.append(line)
    return MountTable(parse_mountinfo(os.fsdecode(b"\n".join(lines) + b"\n")) if lines else [])


class MountPoints:
    """Only the mount points of some mountinfo lines: the one question a watcher asks of
    thousands of mounts ("is X still mounted?") without parsing each line whole (a
    ``MountTable`` of 10,000 lines costs ~0.1 s of Python; this a tenth of it)."""

    __slots__ = ("_points",)

    def __init__(self, lines: Iterable[bytes]) -> None:
        points = set()
        for line in lines:
            fields = line.split(b" ", 5)
            if len(fields) > 4:
                points.add(fields[4])
        self._points = points

    def is_mount_point(self, path: str) -> bool:
        """Whether something is mounted exactly at `path` (lexically normalised, no symlinks)."""
        raw = os.fsencode(_norm(path))
        if b" " in raw or b"\\" in raw or b"\t" in raw or b"\n" in raw:
            # The kernel escapes these (octal) in mountinfo: compare escaped.
            raw = b"".join(b"\\%03o" % c if c in b" \t\n\\" else bytes((c,)) for c in raw)
        return raw in self._points


class MountInfoWatcher:
    """Learn that this mount namespace's mount table changed, without re-reading it in a loop.

    Use: ``with MountInfoWatcher() as w: while ...: if w.wait(5.0): table = MountTable.read()``.
    A True from `wait` means "something changed since the last wait"; several changes can
    collapse into one. Always keep a periodic full re-read as a safety net.
    """

    def __init__(self, path: str = DEFAULT_MOUNTINFO, wake_fd: int | None = None) -> None:
        """`wake_fd` (e.g. a pipe's read end) ends a `wait` early when it becomes readable,
        so an owner can stop a thread blocked in `wait` at once; the owner drains it."""
        self._path = path
        self._fd: int | None = None  # set first so close()/__del__ work if open() fails
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._fd, _WATCH_EVENTS)
        if wake_fd is not None:
            self._poll.register(wake_fd, select.POLLIN)

    def fileno(self) -> int:
        """The fd, for callers that want to include it in their own poll/epoll loop."""
        if self._fd is None:
            raise ValueError("MountInfoWatcher is closed")
        return self._fd

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` seconds; True when the mount table changed since the last
        True. poll(2) itself re-arms the notification (the kernel compares the namespace's
        event counter with the one it saw last), so no read of the table is needed: a
        burst of a thousand mounts costs a thousand cheap polls, not a thousand reads."""
        fd = self.fileno()
        try:
            events = self._poll.poll(max(0.0, timeout) * 1000.0)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            return False
        return any(fd_ == fd and ev & _WATCH_EVENTS for fd_, ev in events)

    def table(self, under: str | None = None) -> MountTable:
        """Read the mount table now, through the watcher's own fd (one read).

        With `under`, only mounts whose mount point is `under` or below it are parsed: on a
        node where containers come and go, most of a long table is someone else's, and a
        cheap byte test per line skips it."""
        if under is None:
            return MountTable.parse(os.fsdecode(self._read()))
        return table_of_lines(self.lines_under(under), under)

    def lines_under(self, under: str) -> list[bytes]:
        """Read the mount table now and keep only the raw lines that may be mounts at or below
        `under` (a byte test, nothing parsed): cheap enough to compare with the last read and
        skip the parse when nothing of ours changed (the table changes for everyone's mounts)."""
        return _lines_under(self._read(), under)

    def _read(self) -> bytes:
        fd = self.fileno()
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._fd is not None:
            try:
                self._poll.unregister(self._fd)
            except (KeyError, ValueError):
                pass
            try:
                os.close(self._fd)
            except OSError as e:  # pragma: no cover
                if e.errno != errno.EBADF:
                    raise
            self._fd = None

    def __enter__(self) -> MountInfoWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
