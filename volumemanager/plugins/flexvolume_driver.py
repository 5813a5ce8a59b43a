"""FlexVolume drivers: calling one executable the way the kubelet does, and probing the plugin dir.

FlexVolume drivers are written against the kubelet (``pkg/volume/flexvolume``), not against us,
so everything a driver can observe follows the kubelet exactly:

* **Path**: ``<plugin dir>/<vendor>~<driver>/<driver>``; the driver's name is the directory name
  with ``~`` turned into ``/`` (``vendor~driver`` -> ``vendor/driver``), the executable is named
  after the part behind the last ``~``.
* **argv** per verb (``driver-call.go``, ``attacher.go``, ``detacher.go``, ``mounter.go``, ...)::

      init
      getvolumename <json>
      attach <json> <node>
      waitforattach <device> <json>
      isattached <json> <node>
      detach <pv or volume name> <node>
      mountdevice <device mount path> <device> <json>
      unmountdevice <device mount path>
      mount <target dir> <json>
      unmount <target dir>
      expandvolume <json> <device mount path> <new bytes> <old bytes>
      expandfs <json> <device> <device mount path> <new bytes> <old bytes>

* **Options**: one JSON object of strings, keys sorted and ``<``/``>``/``&`` escaped (Go's
  ``json.Marshal`` of a ``map[string]string``); see :func:`build_options`.
* **Reply**: stdout and stderr together (Go's ``CombinedOutput``) must be one JSON object
  ``{status, message, device, volumeName, attached, capabilities, volumeNewSize}``; keys match
  case-insensitively as in Go. ``Success`` is success, ``Not supported`` makes the caller fall back
  on the built-in behaviour (and the verb is remembered as unsupported for this driver's life,
  as the kubelet does), anything else is a failure carrying the driver's message.
* **init capabilities** default to ``attach``, ``selinuxRelabel``, ``fsGroup``,
  ``requiresFSResize`` true and ``supportsMetrics`` false; a reply overrides only the keys it has
  (so a driver that cannot attach must say ``{"attach": false}``). An ``init`` that does not
  reply ``Success`` (``Not supported`` included) means the driver is not loaded.

Where we differ from the kubelet, it is to be safer, never to change what a driver sees: every
call has a deadline (the kubelet has one only for ``waitforattach``); on the deadline the whole
process group is killed and the outcome is *uncertain*; output is bounded; the options JSON is
never logged with secrets in it; a helper that keeps the output pipe open after the driver exits
(a FUSE daemon started by ``mount``) does not hang the call.

The kubelet's own behaviour on ``Not supported`` (the plugin implements it, not this module):
``attach`` -> no device (""); ``waitforattach`` -> the device it was given; ``isattached`` ->
treat as attached; ``detach`` -> success; ``mountdevice`` -> format-and-mount of the device at
the device mount path when there is a device, nothing when there is none; ``mount`` -> bind mount
of the device mount path onto the target; ``unmount`` -> clean up the mount point (unmount, remove
the dir); ``unmountdevice`` -> unmount the path; ``expandvolume`` -> success; ``expandfs`` ->
the generic filesystem resize; ``getvolumename`` -> the PV or volume name (its reply is ignored
even on success).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from operation_executor.errors import FinalError, TransientError, UncertainError, WaitingError

log = logging.getLogger(__name__)

#: The kubelet's ``--volume-plugin-dir`` default.
DEFAULT_PLUGIN_DIR = "/usr/libexec/kubernetes/kubelet-plugins/volume/exec"

# Verbs (driver-call.go).
INIT = "init"
GET_VOLUME_NAME = "getvolumename"
ATTACH = "attach"
WAIT_FOR_ATTACH = "waitforattach"
IS_ATTACHED = "isattached"
DETACH = "detach"
MOUNT_DEVICE = "mountdevice"
UNMOUNT_DEVICE = "unmountdevice"
MOUNT = "mount"
UNMOUNT = "unmount"
EXPAND_VOLUME = "expandvolume"
EXPAND_FS = "expandfs"

# Option keys (driver-call.go).
OPTION_FS_TYPE = "kubernetes.io/fsType"
OPTION_READ_WRITE = "kubernetes.io/readwrite"
OPTION_SECRET_PREFIX = "kubernetes.io/secret/"
OPTION_FS_GROUP = "kubernetes.io/mounterArgs.FsGroup"
OPTION_PV_OR_VOLUME_NAME = "kubernetes.io/pvOrVolumeName"
OPTION_POD_NAME = "kubernetes.io/pod.name"
OPTION_POD_NAMESPACE = "kubernetes.io/pod.namespace"
OPTION_POD_UID = "kubernetes.io/pod.uid"
OPTION_SERVICE_ACCOUNT_NAME = "kubernetes.io/serviceAccount.name"

STATUS_SUCCESS = "Success"
STATUS_FAILURE = "Failure"
STATUS_NOT_SUPPORTED = "Not supported"

# Where the options JSON goes in each verb's argv, and how many other arguments it takes.
# (position of the JSON among the arguments after the verb, or None; count of the others)
_ARGV_LAYOUT: dict[str, tuple[int | None, int]] = {
    INIT: (None, 0),
    GET_VOLUME_NAME: (0, 0),
    ATTACH: (0, 1),
    WAIT_FOR_ATTACH: (1, 1),
    IS_ATTACHED: (0, 1),
    DETACH: (None, 2),
    MOUNT_DEVICE: (2, 2),
    UNMOUNT_DEVICE: (None, 1),
    MOUNT: (1, 1),
    UNMOUNT: (None, 1),
    EXPAND_VOLUME: (0, 3),
    EXPAND_FS: (0, 4),
}

# Deadlines. The kubelet waits forever on all but waitforattach (its caller's 10 minutes); a
# driver that hangs forever would hold the volume's operation forever, so each call gets one,
# generous enough for a real driver: mountdevice may run mkfs on a large disk.
DEFAULT_TIMEOUTS: dict[str, float] = {
    INIT: 30.0,
    GET_VOLUME_NAME: 30.0,
    IS_ATTACHED: 60.0,
    WAIT_FOR_ATTACH: 600.0,
    MOUNT_DEVICE: 600.0,
    EXPAND_FS: 600.0,
}
DEFAULT_TIMEOUT = 120.0

#: Replies longer than this are not a FlexVolume reply; reading stops there.
MAX_OUTPUT_BYTES = 1 << 20
#: How much of a bad reply an error message quotes.
QUOTE_LIMIT = 400
#: After the driver exits, how long to wait for helpers it left holding the output pipe.
PIPE_GRACE_SECONDS = 1.0
#: After SIGKILL of the group, how long to wait for the driver to be reaped.
KILL_WAIT_SECONDS = 10.0

MASK = "***"


# ---------------------------------------------------------------------------------------------
# Errors


class DriverNotSupported(FinalError):
    """The driver replied ``Not supported`` for this verb: the caller falls back on the built-in
    behaviour, as the kubelet does. The call changed nothing."""

    def __init__(self, driver: str, op: str) -> None:
        super().__init__(f"FlexVolume driver {driver}: {op} is not supported by the driver", "NOT_SUPPORTED")
        self.driver = driver
        self.op = op


class DriverFailure(FinalError):
    """The driver replied with a status other than ``Success`` (normally ``Failure``).

    ``driver_message`` is the driver's own ``message``, shown by ``explain``. Final, as in the
    kubelet, because the driver answered: it says what happened. A caller tearing down may
    prefer to re-raise it as uncertain (the volume is then still mounted)."""

    def __init__(self, driver: str, op: str, status: str, driver_message: str, exit_code: int) -> None:
        super().__init__(
            f"FlexVolume driver {driver}: {op} failed: {driver_message or '(no message)'}"
            + ("" if status == STATUS_FAILURE else f" (status {status!r})"),
            "DRIVER_FAILURE",
        )
        self.driver = driver
        self.op = op
        self.status = status
        self.driver_message = driver_message
        self.exit_code = exit_code


class DriverTimeout(UncertainError):
    """The driver did not reply before the deadline; its process group was killed. What it did
    before is unknown."""

    def __init__(self, driver: str, op: str, timeout: float) -> None:
        super().__init__(
            f"FlexVolume driver {driver}: {op} did not reply within {timeout:g}s; killed", "DEADLINE_EXCEEDED"
        )
        self.driver = driver
        self.op = op
        self.timeout = timeout


class DriverReplyError(UncertainError):
    """The driver's output is not a FlexVolume reply (not JSON, wrong types, too long), or it
    replied ``Success`` yet exited non-zero. Uncertain: we cannot tell what it did."""

    def __init__(self, driver: str, op: str, problem: str, output: str, exit_code: int) -> None:
        super().__init__(
            f"FlexVolume driver {driver}: {op}: {problem} (exit status {exit_code}); output: {output!r}",
            "BAD_DRIVER_REPLY",
        )
        self.driver = driver
        self.op = op
        self.output = output
        self.exit_code = exit_code


class DriverExecError(TransientError):
    """The executable could not be started (not executable, bad interpreter): nothing ran."""

    def __init__(self, driver: str, executable: str, err: OSError) -> None:
        super().__init__(
            f"FlexVolume driver {driver}: cannot run {executable}: {err.strerror or err}", "DRIVER_NOT_RUNNABLE"
        )
        self.driver = driver


class DriverMissing(WaitingError):
    """The executable is not there (yet): the call waits for the driver to be installed."""

    def __init__(self, driver: str, executable: str) -> None:
        super().__init__(
            f"FlexVolume driver {driver}: {executable} does not exist",
            waiting_for=f"FlexVolume driver {driver}",
            code="DRIVER_NOT_FOUND",
        )
        self.driver = driver


# ---------------------------------------------------------------------------------------------
# Reply


@dataclass(frozen=True)
class DriverCapabilities:
    """What ``init`` says the driver can do; absent keys keep the kubelet's defaults."""

    attach: bool = True
    selinux_relabel: bool = True
    supports_metrics: bool = False
    fs_group: bool = True
    requires_fs_resize: bool = True


_CAPABILITY_KEYS = {
    "attach": "attach",
    "selinuxrelabel": "selinux_relabel",
    "supportsmetrics": "supports_metrics",
    "fsgroup": "fs_group",
    "requiresfsresize": "requires_fs_resize",
}


@dataclass(frozen=True)
class DriverStatus:
    """A driver's JSON reply (``DriverStatus`` in driver-call.go)."""

    status: str
    message: str = ""
    device: str = ""
    volume_name: str = ""
    attached: bool = False
    capabilities: DriverCapabilities = dataclasses.field(default_factory=DriverCapabilities)
    volume_new_size: int = 0


# JSON key (lower-cased, as Go matches case-insensitively) -> (field, type)
_STATUS_KEYS: dict[str, tuple[str, type]] = {
    "status": ("status", str),
    "message": ("message", str),
    "device": ("device", str),
    "volumename": ("volume_name", str),
    "attached": ("attached", bool),
    "capabilities": ("capabilities", dict),
    "volumenewsize": ("volume_new_size", int),
}


class _BadReply(ValueError):
    pass


def _fold_keys(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Go's encoding/json matches keys case-insensitively, an exact match winning."""
    folded: dict[str, Any] = {}
    exact: set[str] = set()
    for key, value in obj.items():
        low = key.lower()
        if key == low:
            folded[low] = value
            exact.add(low)
        elif low not in exact:
            folded[low] = value
    return folded


def _typed(value: Any, want: type, where: str) -> Any:
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if not ok:
        raise _BadReply(f"{where} is {type(value).__name__}, not {want.__name__}")
    return value


def parse_reply(text: str) -> DriverStatus:
    """Parse a driver's output strictly as Go unmarshals it into ``DriverStatus``: one JSON
    object; known keys of the wrong type are an error; unknown keys and ``null`` values are
    ignored. Raises ValueError describing the problem."""
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise _BadReply("output is not JSON" if text.strip() else "empty output") from e
    if not isinstance(obj, dict):
        raise _BadReply(f"reply is a JSON {type(obj).__name__}, not an object")
    fields: dict[str, Any] = {}
    for key, value in _fold_keys(obj).items():
        if key not in _STATUS_KEYS or value is None:
            continue
        name, want = _STATUS_KEYS[key]
        if name == "capabilities":
            caps: dict[str, bool] = {}
            for ckey, cvalue in _fold_keys(_typed(value, dict, "capabilities")).items():
                if ckey in _CAPABILITY_KEYS and cvalue is not None:
                    caps[_CAPABILITY_KEYS[ckey]] = _typed(cvalue, bool, f"capabilities.{ckey}")
            fields[name] = DriverCapabilities(**caps)
        else:
            fields[name] = _typed(value, want, key)
    return DriverStatus(**{"status": "", **fields})


# ---------------------------------------------------------------------------------------------
# Options


def go_json(options: Mapping[str, str]) -> str:
    """``json.Marshal`` of a Go ``map[string]string``: keys sorted, no spaces, non-ASCII kept,
    and ``<``, ``>``, ``&``, U+2028, U+2029 escaped as Go does."""
    text = json.dumps(dict(options), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for raw, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                     ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, esc)
    return text


def build_options(
    *,
    pv_or_volume_name: str,
    fs_type: str = "",
    read_only: bool = False,
    pod_name: str | None = None,
    pod_namespace: str | None = None,
    pod_uid: str | None = None,
    service_account_name: str | None = None,
    secrets: Mapping[str, bytes | str] | None = None,
    fs_group: int | None = None,
    user_options: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The options object the kubelet sends (``NewOptionsForDriver`` plus the mounter's extras).

    Every call gets ``fsType``, ``readwrite`` (``ro``/``rw``) and ``pvOrVolumeName``. Only
    ``mount`` gets the pod keys (pass ``pod_name`` for it: then all four pod keys are present, an
    empty service account included, as in the kubelet), the secrets (each value base64 under
    ``kubernetes.io/secret/<key>``) and ``mounterArgs.FsGroup``. The volume's own ``options``
    come last and override everything, as in the kubelet.

    Raises ValueError naming the key whose value is not a string.
    """
    options: dict[str, str] = {
        OPTION_FS_TYPE: fs_type,
        OPTION_READ_WRITE: "ro" if read_only else "rw",
        OPTION_PV_OR_VOLUME_NAME: pv_or_volume_name,
    }
    if pod_name is not None:
        options[OPTION_POD_NAME] = pod_name
        options[OPTION_POD_NAMESPACE] = pod_namespace or ""
        options[OPTION_POD_UID] = pod_uid or ""
        options[OPTION_SERVICE_ACCOUNT_NAME] = service_account_name or ""
    for key, value in (secrets or {}).items():
        data = value.encode() if isinstance(value, str) else bytes(value)
        options[OPTION_SECRET_PREFIX + key] = base64.b64encode(data).decode("ascii")
    if fs_group is not None:
        options[OPTION_FS_GROUP] = str(int(fs_group))
    for key, value in (user_options or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"flexVolume options: {key!r} must map to a string, not {type(value).__name__}")
        options[key] = value
    return options


def masked_options(options: Mapping[str, str]) -> dict[str, str]:
    """``options`` with every ``kubernetes.io/secret/*`` value replaced by ``***``: for logs."""
    return {k: (MASK if k.startswith(OPTION_SECRET_PREFIX) else v) for k, v in options.items()}


def _secret_strings(options: Mapping[str, str] | None) -> list[str]:
    """The secret values as sent (base64) and decoded, to scrub from a quoted reply."""
    found: list[str] = []
    for key, value in (options or {}).items():
        if key.startswith(OPTION_SECRET_PREFIX) and value:
            found.append(value)
            try:
                decoded = base64.b64decode(value, validate=True).decode()
            except ValueError:
                continue
            if len(decoded) >= 4:
                found.append(decoded)
    return sorted(found, key=len, reverse=True)


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        text = text.replace(s, MASK)
    return text


# ---------------------------------------------------------------------------------------------
# Names


def driver_name_from_dir(dir_name: str) -> str:
    """``vendor~driver`` -> ``vendor/driver`` (the kubelet's ``UnescapeQualifiedName``)."""
    return dir_name.replace("~", "/")


def executable_path(plugin_dir: str, dir_name: str) -> str:
    """``<plugin dir>/<vendor>~<driver>/<driver>``: named after the part behind the last ``~``."""
    return os.path.join(plugin_dir, dir_name, dir_name.split("~")[-1])


def dir_name_for_driver(driver: str) -> str:
    """``vendor/driver`` -> ``vendor~driver``."""
    return driver.replace("/", "~")


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass(frozen=True)
class _RunResult:
    output: bytes
    exit_code: int
    truncated: bool


class FlexDriver:
    """One FlexVolume driver executable, called as the kubelet calls it.

    Thread-safe: calls for different volumes may run at once, as in the kubelet. ``capabilities``
    is what the last successful :meth:`init` returned (the kubelet's defaults before that).
    """

    def __init__(self, name: str, executable: str) -> None:
        self.name = name
        self.executable = executable
        self.capabilities = DriverCapabilities()
        self._lock = threading.Lock()
        self._unsupported: set[str] = set()

    def __repr__(self) -> str:
        return f"FlexDriver({self.name!r}, {self.executable!r})"

    # -- verbs -------------------------------------------------------------------------------

    def init(self, timeout: float | None = None) -> DriverCapabilities:
        """``init``; remembers and returns the capabilities. Any error (``Not supported``
        included) means the driver must not be loaded, as in the kubelet."""
        status = self.call(INIT, timeout=timeout)
        self.capabilities = status.capabilities
        return status.capabilities

    def get_volume_name(self, options: Mapping[str, str], timeout: float | None = None) -> DriverStatus:
        return self.call(GET_VOLUME_NAME, options=options, timeout=timeout)

    def attach(self, options: Mapping[str, str], node: str, timeout: float | None = None) -> str:
        """``attach <json> <node>`` -> the device path the driver reports."""
        return self.call(ATTACH, node, options=options, timeout=timeout).device

    def wait_for_attach(self, device: str, options: Mapping[str, str], timeout: float | None = None) -> str:
        """``waitforattach <device> <json>`` -> the device path the driver reports."""
        return self.call(WAIT_FOR_ATTACH, device, options=options, timeout=timeout).device

    def is_attached(self, options: Mapping[str, str], node: str, timeout: float | None = None) -> bool:
        """``isattached <json> <node>`` -> the reply's ``attached``."""
        return self.call(IS_ATTACHED, node, options=options, timeout=timeout).attached

    def detach(self, pv_or_volume_name: str, node: str, timeout: float | None = None) -> DriverStatus:
        return self.call(DETACH, pv_or_volume_name, node, timeout=timeout)

    def mount_device(self, device_mount_path: str, device: str, options: Mapping[str, str],
                     timeout: float | None = None) -> DriverStatus:
        return self.call(MOUNT_DEVICE, device_mount_path, device, options=options, timeout=timeout)

    def unmount_device(self, device_mount_path: str, timeout: float | None = None) -> DriverStatus:
        return self.call(UNMOUNT_DEVICE, device_mount_path, timeout=timeout)

    def mount(self, target_dir: str, options: Mapping[str, str], timeout: float | None = None) -> DriverStatus:
        return self.call(MOUNT, target_dir, options=options, timeout=timeout)

    def unmount(self, target_dir: str, timeout: float | None = None) -> DriverStatus:
        return self.call(UNMOUNT, target_dir, timeout=timeout)

    def expand_volume(self, options: Mapping[str, str], device_mount_path: str, new_bytes: int,
                      old_bytes: int, timeout: float | None = None) -> DriverStatus:
        return self.call(EXPAND_VOLUME, device_mount_path, str(new_bytes), str(old_bytes),
                         options=options, timeout=timeout)

    def expand_fs(self, options: Mapping[str, str], device: str, device_mount_path: str, new_bytes: int,
                  old_bytes: int, timeout: float | None = None) -> DriverStatus:
        return self.call(EXPAND_FS, device, device_mount_path, str(new_bytes), str(old_bytes),
                         options=options, timeout=timeout)

    # -- the call ----------------------------------------------------------------------------

    @staticmethod
    def argv(op: str, *args: str, options: Mapping[str, str] | None = None) -> list[str]:
        """The arguments after the executable, in the kubelet's order for ``op``: ``args`` are
        the verb's other arguments in order, the options JSON is put where ``op`` has it."""
        if op not in _ARGV_LAYOUT:
            raise ValueError(f"unknown FlexVolume verb {op!r}")
        json_at, n_args = _ARGV_LAYOUT[op]
        if len(args) != n_args:
            raise ValueError(f"{op} takes {n_args} argument(s) besides the options, got {len(args)}")
        if (json_at is None) != (options is None):
            raise ValueError(f"{op} {'takes no' if json_at is None else 'needs'} options")
        out = [op, *args]
        if json_at is not None and options is not None:
            out.insert(1 + json_at, go_json(options))
        return out

    def call(self, op: str, *args: str, options: Mapping[str, str] | None = None,
             timeout: float | None = None) -> DriverStatus:
        """Run ``<executable> <op> ...`` and return its ``Success`` reply.

        Raises DriverNotSupported (fall back), DriverFailure (the driver's message),
        DriverTimeout (killed; uncertain), DriverReplyError (garbage; uncertain),
        DriverMissing / DriverExecError (nothing ran).
        """
        argv = self.argv(op, *args, options=options)
        with self._lock:
            if op in self._unsupported:
                raise DriverNotSupported(self.name, op)
        if timeout is None:
            timeout = DEFAULT_TIMEOUTS.get(op, DEFAULT_TIMEOUT)
        shown = self.argv(op, *args, options=masked_options(options)) if options is not None else argv
        log.debug("FlexVolume %s: %s %s", self.name, self.executable, " ".join(shown))
        started = time.monotonic()
        result = self._run(argv, op, timeout)
        text = result.output.decode("utf-8", errors="replace")
        secrets = _secret_strings(options)

        def quoted() -> str:
            body = _scrub(text, secrets)
            return body[:QUOTE_LIMIT] + ("..." if len(body) > QUOTE_LIMIT or result.truncated else "")

        if result.truncated:
            raise DriverReplyError(self.name, op, f"reply longer than {MAX_OUTPUT_BYTES} bytes",
                                   quoted(), result.exit_code)
        try:
            status = parse_reply(text)
        except ValueError as e:
            raise DriverReplyError(self.name, op, f"not a FlexVolume reply: {e}", quoted(),
                                   result.exit_code) from None
        if status.status == STATUS_NOT_SUPPORTED:
            with self._lock:
                self._unsupported.add(op)
            log.info("FlexVolume %s: %s is not supported by the driver", self.name, op)
            raise DriverNotSupported(self.name, op)
        if status.status != STATUS_SUCCESS:
            message = _scrub(status.message, secrets)
            log.warning("FlexVolume %s: %s failed (exit %d, %.1fs): %s", self.name, op, result.exit_code,
                        time.monotonic() - started, message)
            raise DriverFailure(self.name, op, status.status, message, result.exit_code)
        if result.exit_code != 0:
            # The kubelet returns the exec error here ("driver bug"): the reply cannot be trusted.
            raise DriverReplyError(self.name, op, "replied Success but exited non-zero", quoted(),
                                   result.exit_code)
        return status

    def _run(self, argv: list[str], op: str, timeout: float) -> _RunResult:
        """Run the driver in its own process group, stdout and stderr on one pipe."""
        try:
            proc = subprocess.Popen(
                [self.executable, *argv],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError:
            raise DriverMissing(self.name, self.executable) from None
        except OSError as e:
            raise DriverExecError(self.name, self.executable, e) from None
        chunks: list[bytes] = []
        size = [0]
        truncated = [False]
        assert proc.stdout is not None
        pipe = proc.stdout

        def reader() -> None:
            try:
                while True:
                    data = pipe.read1(65536)
                    if not data:
                        return
                    if size[0] < MAX_OUTPUT_BYTES:
                        chunks.append(data[: MAX_OUTPUT_BYTES - size[0]])
                    size[0] += len(data)
                    if size[0] > MAX_OUTPUT_BYTES:
                        truncated[0] = True
            except (OSError, ValueError):
                return

        thread = threading.Thread(target=reader, name=f"flex-{op}-output", daemon=True)
        thread.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_group(proc)
            thread.join(PIPE_GRACE_SECONDS)
            log.warning("FlexVolume %s: %s did not reply within %gs; killed its process group",
                        self.name, op, timeout)
            raise DriverTimeout(self.name, op, timeout) from None
        # Helpers the driver started (a FUSE daemon) may still hold the pipe: do not wait on them.
        thread.join(PIPE_GRACE_SECONDS)
        if not thread.is_alive():
            pipe.close()
        return _RunResult(b"".join(chunks), proc.returncode, truncated[0])

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=KILL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:  # pragma: no cover - an unkillable (D state) driver
            log.error("FlexVolume driver pid %d did not die after SIGKILL", proc.pid)


# ---------------------------------------------------------------------------------------------
# The prober


@dataclass(frozen=True)
class _Seen:
    """What a driver dir looked like when its driver was last probed."""

    signature: tuple[int, int, int, int]


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FlexProber:
    """Keeps ``name -> FlexDriver`` for the drivers under ``plugin_dir``, without restarts.

    Like the kubelet's dynamic prober: a directory ``<vendor>~<driver>`` (not starting with
    ``.``) holding an executable ``<driver>`` is a driver; it is loaded after ``init`` replies
    ``Success``, re-``init``-ed when anything in its directory changes, and forgotten when the
    executable or the directory goes. inotify (watchdog) notices changes at once; a rescan every
    ``rescan_interval`` seconds is the safety net (and retries drivers whose ``init`` failed).
    The plugin dir may not exist at start: it is picked up when it appears (unlike the kubelet,
    we do not create it: the default lives under /usr).

    ``on_change(names)`` is called from the prober's thread with the names of drivers added,
    re-initialised or removed.
    """

    def __init__(
        self,
        plugin_dir: str,
        on_change: Callable[[set[str]], None] | None = None,
        *,
        init_timeout: float = DEFAULT_TIMEOUTS[INIT],
        rescan_interval: float = 10.0,
        settle_seconds: float = 0.2,
    ) -> None:
        self.plugin_dir = os.path.abspath(plugin_dir)
        self.on_change = on_change
        self.init_timeout = init_timeout
        self.rescan_interval = rescan_interval
        self.settle_seconds = settle_seconds
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._drivers: dict[str, FlexDriver] = {}
        self._seen: dict[str, _Seen] = {}  # dir name -> signature of the loaded driver
        self._errors: dict[str, str] = {}  # driver name -> why it is not loaded
        self._dirty: set[str] = set()  # dir names touched since the last probe
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._watched_inode: tuple[int, int] | None = None

    # -- registry ----------------------------------------------------------------------------

    def get(self, name: str) -> FlexDriver | None:
        with self._lock:
            return self._drivers.get(name)

    def drivers(self) -> dict[str, FlexDriver]:
        with self._lock:
            return dict(self._drivers)

    def errors(self) -> dict[str, str]:
        """Drivers found but not loaded, with why (their ``init`` failed)."""
        with self._lock:
            return dict(self._errors)

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        """Probe once now (so drivers present at start are there before the first pass), then
        watch in a thread."""
        self._ensure_watch()
        self.probe()
        self._thread = threading.Thread(target=self._loop, name="flex-prober", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.init_timeout + 5)
        self._unwatch()

    def _loop(self) -> None:
        while not self._stop.is_set():
            # While the plugin dir does not exist there is nothing to watch: look more often.
            interval = self.rescan_interval if self._observer is not None else min(self.rescan_interval, 1.0)
            woken = self._wake.wait(interval)
            if self._stop.is_set():
                return
            if woken:
                # A burst of events (cp of a driver: create, write, chmod) becomes one probe.
                time.sleep(self.settle_seconds)
            self._wake.clear()
            try:
                self._ensure_watch()
                self.probe()
            except Exception:  # noqa: BLE001 - the prober must outlive any one bad probe
                log.exception("FlexVolume prober: probe of %s failed", self.plugin_dir)

    # -- probing -----------------------------------------------------------------------------

    def _scan(self) -> dict[str, tuple[str, _Seen]]:
        """dir name -> (executable, signature) for each driver dir with a regular executable."""
        found: dict[str, tuple[str, _Seen]] = {}
        try:
            entries = list(os.scandir(self.plugin_dir))
        except (FileNotFoundError, NotADirectoryError):
            return found
        except OSError as e:
            log.warning("FlexVolume prober: cannot read %s: %s", self.plugin_dir, e)
            raise
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            exe = executable_path(self.plugin_dir, entry.name)
            try:
                st = os.stat(exe)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or not os.access(exe, os.X_OK):
                continue
            found[entry.name] = (exe, _Seen(_signature(st)))
        return found

    def probe(self) -> set[str]:
        """Bring the registry in line with the directory now; returns (and reports through
        ``on_change``) the names of drivers added, re-initialised or removed."""
        with self._probe_lock:
            with self._lock:
                dirty, self._dirty = self._dirty, set()
            try:
                found = self._scan()
            except OSError:
                return set()
            changed: set[str] = set()
            for dir_name in list(self._seen):
                if dir_name not in found:
                    name = driver_name_from_dir(dir_name)
                    with self._lock:
                        self._drivers.pop(name, None)
                        del self._seen[dir_name]
                    log.info("FlexVolume driver %s removed", name)
                    changed.add(name)
            with self._lock:
                for name in list(self._errors):
                    if dir_name_for_driver(name) not in found:
                        del self._errors[name]
            for dir_name, (exe, seen) in sorted(found.items()):
                name = driver_name_from_dir(dir_name)
                old = self._seen.get(dir_name)
                if old == seen and dir_name not in dirty:
                    continue
                driver = FlexDriver(name, exe)
                try:
                    caps = driver.init(timeout=self.init_timeout)
                except Exception as e:  # noqa: BLE001 - one bad driver must not stop the others
                    # Retried on the next probe; a driver loaded before stays loaded meanwhile,
                    # as the kubelet keeps the old plugin when a re-probe fails.
                    with self._lock:
                        repeated = self._errors.get(name) == str(e)
                        self._errors[name] = str(e)
                    if not repeated:
                        log.warning("FlexVolume driver %s not loaded: init failed: %s", name, e)
                    continue
                with self._lock:
                    self._drivers[name] = driver
                    self._seen[dir_name] = seen
                    self._errors.pop(name, None)
                log.info("FlexVolume driver %s %s (attach=%s)", name, "re-initialised" if old else "loaded",
                         caps.attach)
                changed.add(name)
        if changed and self.on_change is not None:
            try:
                self.on_change(set(changed))
            except Exception:  # noqa: BLE001
                log.exception("FlexVolume prober: on_change failed")
        return changed

    # -- watching ----------------------------------------------------------------------------

    def _mark(self, path: str) -> None:
        rel = os.path.relpath(os.path.abspath(path), self.plugin_dir)
        if rel == "." or rel.startswith(".."):
            self._wake.set()
            return
        top = rel.split(os.sep, 1)[0]
        if top.startswith(".") or os.path.basename(path).startswith("."):
            return
        with self._lock:
            self._dirty.add(top)
        self._wake.set()

    def _ensure_watch(self) -> None:
        """Watch the plugin dir when it exists (again: it may be deleted and recreated)."""
        try:
            st = os.stat(self.plugin_dir)
        except OSError:
            self._unwatch()
            return
        inode = (st.st_dev, st.st_ino)
        if self._observer is not None and self._watched_inode == inode and self._observer.is_alive():
            return
        self._unwatch()
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - watchdog is a dependency; the rescan still works
            return
        prober = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                for p in (event.src_path, getattr(event, "dest_path", "")):
                    if p:
                        prober._mark(os.fsdecode(p))

        observer = Observer()
        try:
            observer.schedule(Handler(), self.plugin_dir, recursive=True)
            observer.start()
        except OSError as e:
            log.warning("FlexVolume prober: cannot watch %s (%s); rescanning every %gs",
                        self.plugin_dir, e, self.rescan_interval)
            return
        self._observer = observer
        self._watched_inode = inode

    def _unwatch(self) -> None:
        if self._observer is not None:
            try:
                self._observer.stop()
                self._observer.join(timeout=5)
            except Exception:  # noqa: BLE001
                pass
        self._observer = None
        self._watched_inode = None


__all__ = [
    "DEFAULT_PLUGIN_DIR", "DriverCapabilities", "DriverStatus", "FlexDriver", "FlexProber",
    "DriverNotSupported", "DriverFailure", "DriverTimeout", "DriverReplyError", "DriverExecError",
    "DriverMissing", "build_options", "masked_options", "parse_reply", "go_json",
    "driver_name_from_dir", "executable_path", "dir_name_for_driver",
]
