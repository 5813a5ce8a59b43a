"""Validation of the names that become path components or identities.

Names from manifests end up in directory names (``pods/<uid>/volumes/<plugin>/<volume>``,
``plugins/kubernetes.io/local-volume/mounts/<pv>``) and in log lines, so every one is checked
here before a model object is built: a name with ``/``, ``..``, NUL or control characters would
otherwise let a manifest point the daemon outside its root dir. The rules are Kubernetes' own
(DNS-1123 label / subdomain) so that manifests that work with a kubelet work here, and each
failure says *what* is wrong, not just "invalid".

Every ``validate_*`` function returns the (unchanged) value when it is valid and raises
:class:`InvalidName` otherwise; the ``*_problem`` helpers return the message or ``None``.
"""

from __future__ import annotations

import re

LABEL_MAX = 63  # DNS-1123 label (RFC 1123): namespaces, volume names
SUBDOMAIN_MAX = 253  # DNS-1123 subdomain: object names
UID_MAX = 128  # a pod UID names a directory; Kubernetes UIDs are 36 characters
CSI_DRIVER_MAX = 63  # CSI spec: "MUST be 63 characters or less"
SECRET_KEY_MAX = 253  # Kubernetes: ConfigMap/Secret keys
SHOWN_MAX = 64  # how much of a bad value an error message repeats

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_SUBDOMAIN_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_UID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# CSI spec: domain name notation, beginning and ending with an alphanumeric character
# ([a-z0-9A-Z]) with dashes, dots and alphanumerics between. Kubernetes checks the lower-cased
# name against DNS-1123 subdomain, which is the same set; both allow upper case.
_CSI_DRIVER_RE = re.compile(r"[A-Za-z0-9](?:[-.A-Za-z0-9]*[A-Za-z0-9])?")
_SECRET_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")


class InvalidName(ValueError):
    """A name that cannot be used; ``str()`` says what is wrong with it."""


def shown(value: object) -> str:
    """A bounded, escaped rendering of a bad value for an error message."""
    text = repr(value)
    if len(text) > SHOWN_MAX:
        text = text[: SHOWN_MAX - 3] + "..."
    return text


def _hostile_problem(value: object, limit: int) -> str | None:
    """The checks every kind of name shares; they are worded for the hostile cases."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if value == "":
        return "must not be empty"
    for i, ch in enumerate(value):
        if ch == "\x00":
            return f"must not contain a NUL character (at offset {i})"
        if ord(ch) < 0x20 or ord(ch) == 0x7F or 0x80 <= ord(ch) < 0xA0:
            return f"must not contain control characters ({ch!r} at offset {i})"
    if "/" in value:
        return f"{shown(value)} must not contain '/'"
    if value in (".", ".."):
        return f"{shown(value)} may not be '.' or '..'"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        return f"must be no more than {limit} bytes (is {size})"
    return None


def label_problem(value: object) -> str | None:
    """Why ``value`` is not a DNS-1123 label, or None."""
    problem = _hostile_problem(value, LABEL_MAX)
    if problem:
        return problem
    assert isinstance(value, str)
    if not _LABEL_RE.fullmatch(value):
        return (
            f"{shown(value)} must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character (DNS-1123 label)"
        )
    return None


def subdomain_problem(value: object) -> str | None:
    """Why ``value`` is not a DNS-1123 subdomain, or None."""
    problem = _hostile_problem(value, SUBDOMAIN_MAX)
    if problem:
        return problem
    assert isinstance(value, str)
    if not _SUBDOMAIN_RE.fullmatch(value):
        return (
            f"{shown(value)} must consist of lower case alphanumeric characters, '-' or '.', "
            "and must start and end with an alphanumeric character (DNS-1123 subdomain)"
        )
    return None


def uid_problem(value: object) -> str | None:
    """Why ``value`` cannot be a pod UID (it names a directory), or None."""
    problem = _hostile_problem(value, UID_MAX)
    if problem:
        return problem
    assert isinstance(value, str)
    if not _UID_RE.fullmatch(value):
        return (
            f"{shown(value)} must consist of letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )
    return None


def csi_driver_problem(value: object) -> str | None:
    """Why ``value`` is not a CSI driver name, or None."""
    problem = _hostile_problem(value, CSI_DRIVER_MAX)
    if problem:
        return problem
    assert isinstance(value, str)
    if not _CSI_DRIVER_RE.fullmatch(value):
        return (
            f"{shown(value)} must consist of alphanumeric characters, '-' or '.', and must "
            "start and end with an alphanumeric character (CSI driver name)"
        )
    return None


def secret_key_problem(value: object) -> str | None:
    """Why ``value`` is not a Secret data key, or None."""
    problem = _hostile_problem(value, SECRET_KEY_MAX)
    if problem:
        return problem
    assert isinstance(value, str)
    if not _SECRET_KEY_RE.fullmatch(value):
        return f"{shown(value)} must consist of alphanumeric characters, '-', '_' or '.'"
    return None


RELATIVE_PATH_MAX = 4096  # PATH_MAX: an item path ends up under the volume's directory
PATH_COMPONENT_MAX = 255  # NAME_MAX


def relative_path_problem(value: object) -> str | None:
    """Why ``value`` cannot be a file path inside a volume (configMap/secret/downwardAPI/
    projected ``items[].path``), or None. Kubernetes' rule: relative, no '..' component and
    not starting with '..'; here also no NUL or control characters and Linux's length limits,
    because the path is created on the host."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if value == "":
        return "must not be empty"
    for i, ch in enumerate(value):
        if ord(ch) < 0x20 or ord(ch) == 0x7F or 0x80 <= ord(ch) < 0xA0:
            return f"must not contain control or NUL characters (at offset {i})"
    if value.startswith("/"):
        return f"{shown(value)} must be a relative path (no leading '/')"
    parts = value.split("/")
    if ".." in parts or value.startswith(".."):
        return f"{shown(value)} must not contain '..'"
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > RELATIVE_PATH_MAX:
        return f"must be no more than {RELATIVE_PATH_MAX} bytes (is {size})"
    if any(len(p.encode("utf-8", "surrogatepass")) > PATH_COMPONENT_MAX for p in parts):
        return f"each path component must be no more than {PATH_COMPONENT_MAX} bytes"
    return None


_FLEX_PART_RE = re.compile(r"[A-Za-z0-9][-._A-Za-z0-9]*")


def flex_driver_problem(value: object) -> str | None:
    """Why ``value`` is not a FlexVolume driver name ("vendor/driver" or "driver"), or None.
    It names a directory (``vendor~driver``) and an executable, so each part is checked."""
    if not isinstance(value, str):
        return f"must be a string, not {type(value).__name__}"
    if value == "":
        return "must not be empty"
    if len(value.encode("utf-8", "surrogatepass")) > SUBDOMAIN_MAX:
        return f"must be no more than {SUBDOMAIN_MAX} bytes"
    parts = value.split("/")
    if len(parts) > 2 or not all(_FLEX_PART_RE.fullmatch(p) for p in parts):
        return (
            f"{shown(value)} must be 'vendor/driver' or 'driver', each of letters, digits, "
            "'-', '_' or '.', starting with a letter or digit"
        )
    return None


_QUALIFIED_NAME_RE = re.compile(r"[A-Za-z0-9](?:[-_.A-Za-z0-9]*[A-Za-z0-9])?")


def is_qualified_name(value: object) -> bool:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS-1123 subdomain, name at most
    63 characters of alphanumerics, '-', '_', '.' (Kubernetes' IsQualifiedName)."""
    if not isinstance(value, str):
        return False
    prefix, slash, name = value.rpartition("/")
    if slash and subdomain_problem(prefix) is not None:
        return False
    return len(name) <= LABEL_MAX and _QUALIFIED_NAME_RE.fullmatch(name) is not None


def _raise_if(problem: str | None, value: object) -> str:
    if problem:
        raise InvalidName(problem)
    assert isinstance(value, str)
    return value


def validate_object_name(value: object) -> str:
    """An object name (Pod, PersistentVolume, PersistentVolumeClaim, Secret)."""
    return _raise_if(subdomain_problem(value), value)


def validate_namespace(value: object) -> str:
    """A namespace: a DNS-1123 label, as in Kubernetes."""
    return _raise_if(label_problem(value), value)


def validate_volume_name(value: object) -> str:
    """A pod's volume name: a DNS-1123 label; it becomes a directory name."""
    return _raise_if(label_problem(value), value)


def validate_uid(value: object) -> str:
    """A pod UID given in ``metadata.uid``; it becomes a directory name."""
    return _raise_if(uid_problem(value), value)


def validate_csi_driver_name(value: object) -> str:
    """A CSI driver name; it becomes a directory name under ``plugins/kubernetes.io/csi``."""
    return _raise_if(csi_driver_problem(value), value)


def validate_secret_key(value: object) -> str:
    """A key of a Secret's ``data``/``stringData``."""
    return _raise_if(secret_key_problem(value), value)


def is_object_name(value: object) -> bool:
    return subdomain_problem(value) is None


def is_label(value: object) -> bool:
    return label_problem(value) is None


def is_csi_driver_name(value: object) -> bool:
    return csi_driver_problem(value) is None
