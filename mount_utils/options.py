"""Mount options: validation, masking for logs, and translation to mount(2) flags + data.

Options come from manifests (``spec.mountOptions``) and CSI drivers, i.e. from outside. Each
option is later joined with commas into one string (for mount(2) data or ``mount -o``), so an
option containing a comma could smuggle in extra options (``ro,uid=0`` ...), and one starting
with ``-`` could be read as a command-line flag by ``mount``. `validate_mount_options`
refuses both before anything is joined.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mount_utils import syscalls as sc

MASK = "<masked>"

# Generic options handled by the VFS as mount(2) flags: option -> (flags to set, flags to clear).
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (sc.MS_RDONLY, 0),
    "rw": (0, sc.MS_RDONLY),
    "nosuid": (sc.MS_NOSUID, 0),
    "suid": (0, sc.MS_NOSUID),
    "nodev": (sc.MS_NODEV, 0),
    "dev": (0, sc.MS_NODEV),
    "noexec": (sc.MS_NOEXEC, 0),
    "exec": (0, sc.MS_NOEXEC),
    "sync": (sc.MS_SYNCHRONOUS, 0),
    "async": (0, sc.MS_SYNCHRONOUS),
    "dirsync": (sc.MS_DIRSYNC, 0),
    "mand": (sc.MS_MANDLOCK, 0),
    "nomand": (0, sc.MS_MANDLOCK),
    "noatime": (sc.MS_NOATIME, 0),
    "atime": (0, sc.MS_NOATIME),
    "nodiratime": (sc.MS_NODIRATIME, 0),
    "diratime": (0, sc.MS_NODIRATIME),
    "relatime": (sc.MS_RELATIME, 0),
    "norelatime": (0, sc.MS_RELATIME),
    "strictatime": (sc.MS_STRICTATIME, 0),
    "nostrictatime": (0, sc.MS_STRICTATIME),
    "lazytime": (sc.MS_LAZYTIME, 0),
    "nolazytime": (0, sc.MS_LAZYTIME),
    "iversion": (sc.MS_I_VERSION, 0),
    "noiversion": (0, sc.MS_I_VERSION),
    "silent": (sc.MS_SILENT, 0),
    "loud": (0, sc.MS_SILENT),
    "nosymfollow": (sc.MS_NOSYMFOLLOW, 0),
}

# Options that only mean something to mount(8)/fstab; the kernel would reject them with
# EINVAL, so they are dropped before calling mount(2) (as mount(8) does).
_USERSPACE_ONLY = frozenset(
    {"defaults", "auto", "noauto", "nofail", "_netdev", "user", "nouser", "users", "owner", "group"}
)
_USERSPACE_PREFIXES = ("x-", "comment=")

# Flags a bind mount may carry (set on the remount step); data options make no sense there.
BIND_FLAG_MASK = (
    sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC | sc.MS_NOATIME | sc.MS_NODIRATIME
    | sc.MS_RELATIME | sc.MS_STRICTATIME | sc.MS_NOSYMFOLLOW
)


def mask_options(options: Iterable[str], sensitive: Iterable[str]) -> list[str]:
    """The option list as it is passed to mount, safe to log.

    Every sensitive option becomes ``<masked>``: those in `options` that also appear in
    `sensitive` are replaced in place, and the remaining sensitive ones are appended masked
    (they are passed after the plain options), like k8s ``sanitizedOptionsForLogging``.
    """
    plain = list(options)
    secret = list(sensitive)
    secret_set = set(secret)
    shown = [MASK if o in secret_set else o for o in plain]
    present = set(plain)
    shown.extend(MASK for o in secret if o not in present)
    return shown


def _describe(option: str, index: int, sensitive: bool) -> str:
    return f"sensitive option #{index}" if sensitive else f"option {option!r}"


def validate_mount_options(options: Iterable[str], *, sensitive: bool = False) -> tuple[str, ...]:
    """Check each option is one option and nothing else; return them as a tuple.

    Refuses (ValueError naming the option, or only its index when `sensitive`) empty strings,
    commas, newlines, NUL and other control characters, and a leading ``-``.
    """
    if isinstance(options, str):
        # A bare string would be iterated character by character: surely a caller's bug.
        raise ValueError("mount options must be a sequence of strings, not one string")
    out = []
    for i, option in enumerate(options):
        if not isinstance(option, str):
            raise ValueError(f"mount option #{i} is not a string")
        what = _describe(option, i, sensitive)
        if option == "":
            raise ValueError(f"empty mount option (#{i})")
        if "," in option:
            raise ValueError(f"mount {what} contains a comma")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in option):
            raise ValueError(f"mount {what} contains a control character")
        if option.startswith("-"):
            raise ValueError(f"mount {what} starts with '-'")
        out.append(option)
    return tuple(out)


def is_userspace_option(option: str) -> bool:
    """Options meaningful to mount(8) only (``defaults``, ``nofail``, ``x-*`` ...)."""
    return option in _USERSPACE_ONLY or option.startswith(_USERSPACE_PREFIXES)


def split_mount_options(options: Sequence[str]) -> tuple[int, str]:
    """Translate options to ``(MS_* flags, data string)`` for mount(2).

    Generic options become flags (later ones win: ``ro,rw`` is read-write), userspace-only
    options are dropped, everything else goes, in order, into the comma-joined data string.
    The options are validated first.
    """
    flags = 0
    data: list[str] = []
    for option in validate_mount_options(options):
        if option in _FLAG_OPTIONS:
            set_, clear = _FLAG_OPTIONS[option]
            flags = (flags | set_) & ~clear
        elif is_userspace_option(option):
            continue
        else:
            data.append(option)
    return flags, ",".join(data)


def flag_options(options: Sequence[str]) -> int:
    """Only the MS_* flags of `options`; ValueError naming the first non-flag option.

    For bind mounts, where filesystem data options cannot be applied.
    """
    flags, data = split_mount_options(options)
    if data:
        raise ValueError(f"mount option {data.split(',')[0]!r} is not a generic flag option")
    return flags


def flags_to_options(flags: int) -> list[str]:
    """The option names for a set of MS_* flags (for logs and for the fake mounter)."""
    out = ["ro" if flags & sc.MS_RDONLY else "rw"]
    for name, (set_, _clear) in _FLAG_OPTIONS.items():
        if set_ and set_ != sc.MS_RDONLY and flags & set_:
            out.append(name)
    return out
