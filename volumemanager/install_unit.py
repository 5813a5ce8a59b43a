"""`volumemanager install-unit`: put the systemd unit where systemd looks.

Why a command and not packaging metadata: pip's `data_files` land inside the
virtualenv (`<venv>/lib/systemd/system`), where systemd never looks, and the
unit's ExecStart must name the executable of *this* installation (a venv, a
pipx env, /usr/local). So the unit ships as package data and this command
rewrites its ExecStart and writes `/etc/systemd/system/volumemanager.service`.

It also writes the example config to `/etc/volumemanager/config.yaml` when no
config exists yet; an existing config is never touched.

On a node of an existing cluster, `--kubeconfig PATH` adds `--kubeconfig PATH` to
the daemon's ExecStart (the API-server source and the reporter use it), so the
unit says which cluster the node serves where an operator looks first.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from importlib import resources
from typing import IO

UNIT_NAME = "volumemanager.service"
UNIT_DIR = "etc/systemd/system"
CONFIG_DIR = "etc/volumemanager"
CONFIG_NAME = "config.yaml"
# The path the packaged unit uses; replaced by the real executable.
PLACEHOLDER_EXECUTABLE = "/usr/local/bin/volumemanager"
_PLACEHOLDER_RE = re.compile(r"(?<![\w/.-])" + re.escape(PLACEHOLDER_EXECUTABLE) + r"(?![\w/.-])")

# Used when the example config is not in the installed package (an older
# package_data list): every key is optional, so an empty config is valid.
_FALLBACK_CONFIG = """\
# volumemanager daemon configuration. Every key mirrors a long flag of
# `volumemanager daemon` (dashes as underscores) and is optional; flags win.
# Keys: root_dir, manifest_dir, plugins_registry_dir, csi_driver (list),
# node_name, metrics_address, log_format, log_level, socket.
{}
"""


class InstallUnitError(Exception):
    """The unit cannot be installed (message names the path or the cause)."""


def packaged_unit() -> str:
    """The unit file shipped in `volumemanager/data/`."""
    try:
        return resources.files("volumemanager").joinpath("data", UNIT_NAME).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as exc:
        raise InstallUnitError(f"packaged unit volumemanager/data/{UNIT_NAME} is missing: {exc}") from exc


def packaged_example_config() -> str:
    """The example config shipped in `volumemanager/data/`, or a minimal one."""
    try:
        return resources.files("volumemanager").joinpath("data", "config.example.yaml").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return _FALLBACK_CONFIG


def find_executable() -> str:
    """Absolute path of the `volumemanager` console script of this install.

    The script next to the running interpreter comes first: it belongs to
    the same environment as the code running now, while PATH may find
    another installation.
    """
    beside = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "volumemanager")
    if os.path.isfile(beside) and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("volumemanager")
    if found:
        return os.path.abspath(found)
    raise InstallUnitError(
        f"cannot find the volumemanager executable (not at {beside}, not on PATH); pass --executable"
    )


def _systemd_quote(path: str) -> str:
    """Quote an ExecStart path for systemd when it needs it."""
    if re.fullmatch(r"[\w/.+@:-]+", path):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_unit(executable: str, unit_text: str | None = None, kubeconfig: str | None = None) -> str:
    """The packaged unit with every use of the placeholder path replaced, and with
    ``--kubeconfig PATH`` on the daemon's ExecStart when ``kubeconfig`` is given."""
    if not os.path.isabs(executable):
        raise InstallUnitError(f"executable {executable!r} must be an absolute path (systemd requires it)")
    if kubeconfig is not None and not os.path.isabs(kubeconfig):
        raise InstallUnitError(f"--kubeconfig {kubeconfig!r} must be an absolute path (the service runs in /)")
    text = packaged_unit() if unit_text is None else unit_text
    if not _PLACEHOLDER_RE.search(text):
        raise InstallUnitError(f"packaged unit has no {PLACEHOLDER_EXECUTABLE} to replace")
    quoted = _systemd_quote(executable)
    text = _PLACEHOLDER_RE.sub(lambda _m: quoted, text)
    if kubeconfig is not None:
        text = _add_to_daemon_execstart(text, f"--kubeconfig {_systemd_quote(kubeconfig)}")
    return text


def _add_to_daemon_execstart(text: str, extra: str) -> str:
    """Append ``extra`` to the ``ExecStart=... daemon ...`` line (exactly one)."""
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if line.startswith("ExecStart=") and " daemon" in line]
    if len(hits) != 1:
        raise InstallUnitError("packaged unit has no single 'ExecStart=... daemon' line to add flags to")
    lines[hits[0]] = f"{lines[hits[0]].rstrip()} {extra}"
    return "\n".join(lines)


def _write_atomic(path: str, text: str, mode: int) -> None:
    """Write via a temp file + rename: systemd never sees half a unit."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".volumemanager-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def install_unit(
    root: str = "/",
    dry_run: bool = False,
    executable: str | None = None,
    out: IO[str] | None = None,
    kubeconfig: str | None = None,
) -> str:
    """Install the unit under `root` and return its text.

    Writes `<root>/etc/systemd/system/volumemanager.service` (replacing an
    older one) and, when absent, `<root>/etc/volumemanager/config.yaml`.
    `dry_run` prints what would be written to `out` (stdout) and writes
    nothing. ``kubeconfig``: an absolute path put on the daemon's command line
    (``--kubeconfig``); it need not exist yet (it is read when the daemon starts).
    """
    exe = executable or find_executable()
    text = render_unit(exe, kubeconfig=kubeconfig)
    unit_path = os.path.join(root, UNIT_DIR, UNIT_NAME)
    config_dir = os.path.join(root, CONFIG_DIR)
    config_path = os.path.join(config_dir, CONFIG_NAME)
    config_exists = os.path.lexists(config_path)
    if dry_run:
        stream = sys.stdout if out is None else out
        stream.write(f"# would write {unit_path}\n")
        stream.write(text if text.endswith("\n") else text + "\n")
        if config_exists:
            stream.write(f"# would keep the existing {config_path}\n")
        else:
            stream.write(f"# would write the example config to {config_path}\n")
        return text
    try:
        os.makedirs(os.path.dirname(unit_path), mode=0o755, exist_ok=True)
        _write_atomic(unit_path, text, 0o644)
    except OSError as exc:
        raise InstallUnitError(f"cannot write {unit_path}: {exc.strerror or exc}") from exc
    if not config_exists:
        try:
            os.makedirs(config_dir, mode=0o755, exist_ok=True)
            # O_EXCL: never overwrite a config that appeared meanwhile.
            fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return text
        except OSError as exc:
            raise InstallUnitError(f"cannot write {config_path}: {exc.strerror or exc}") from exc
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(packaged_example_config())
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `volumemanager install-unit`."""
    parser.add_argument("--root", default="/", metavar="DIR",
                        help="install under DIR instead of / (for images and tests)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the unit that would be written and write nothing")
    parser.add_argument("--executable", default=None, metavar="PATH",
                        help="volumemanager executable for ExecStart (default: this installation's)")
    parser.add_argument("--kubeconfig", default=None, metavar="PATH",
                        help="absolute path of a kubeconfig: the unit runs 'daemon --kubeconfig PATH' "
                             "(take pods from that API server and report to it)")


def run(args: argparse.Namespace) -> int:
    """Run `install-unit` from parsed arguments; 0 on success, 1 on error."""
    try:
        install_unit(root=args.root, dry_run=args.dry_run, executable=args.executable,
                     kubeconfig=getattr(args, "kubeconfig", None))
    except InstallUnitError as exc:
        print(f"volumemanager install-unit: {exc}", file=sys.stderr)
        return 1
    kubeconfig = getattr(args, "kubeconfig", None)
    if kubeconfig is not None and not os.path.exists(os.path.join(args.root, kubeconfig.lstrip("/"))):
        print(f"note: {kubeconfig} does not exist yet; the daemon reads it when it starts", file=sys.stderr)
    if not args.dry_run:
        unit_path = os.path.join(args.root, UNIT_DIR, UNIT_NAME)
        print(f"wrote {unit_path}")
        print(f"config: {os.path.join(args.root, CONFIG_DIR, CONFIG_NAME)}")
        if os.path.abspath(args.root) == "/":
            print("next: systemctl daemon-reload && systemctl enable --now volumemanager")
    return 0
