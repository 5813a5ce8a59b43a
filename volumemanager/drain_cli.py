"""``volumemanager drain`` and ``volumemanager uncordon``: take the node out of service and back.

``drain`` asks the daemon to stop mounting and to tear every volume down (the daemon does the
work, with the same operations and refusals as a pod's removal; see ``volumemanager.drain``),
then follows the progress through ``status`` until nothing of the node's volumes is left: no
volume in the actual state, no mount under the root dir, no ``pods/<uid>`` dir. It shows a
live view on a terminal and plain lines otherwise, because its output ends up in scripts and
CI logs as often as on a screen.

Exit codes (the same table as every command that asks the daemon): 0 drained clean; 1 timed
out (what is left is printed, with why); 3 no daemon answered; 4 permission denied on the
admin socket; 5 the daemon answered with an error.
"""

from __future__ import annotations

import json
import os
import sys
import time

from operation_executor.types import short_plugin_name
from volumemanager.config import DEFAULT_SOCKET

EXIT_DRAINED = 0
EXIT_NOT_DRAINED = 1
EXIT_NO_DAEMON = 3
EXIT_PERMISSION = 4
EXIT_DAEMON_ERROR = 5  # the daemon answered with an error (e.g. an older daemon without drain)

DEFAULT_TIMEOUT_SECONDS = 120.0
# How often the progress is read from the daemon (one status call each).
POLL_SECONDS = 0.25

DRAIN_EPILOG = """examples:
  volumemanager drain --dry-run        # what would be torn down; changes nothing
  volumemanager drain --timeout 300    # stop mounting, tear everything down, wait until clean
  volumemanager uncordon               # mount again what the manifests ask for
This is how to undo the demo: 'volumemanager drain' leaves no mount and no pod dir behind.
While drained, new pods are not mounted ('explain' says so); 'uncordon' or a daemon restart
resumes. A volume in use is not torn down: it is named with its holders until they let go.
exit codes: 0 drained clean, 1 timed out (what is left is printed, with why), 3 no daemon,
  4 permission denied, 5 the daemon answered with an error"""

UNCORDON_EPILOG = """examples:
  volumemanager uncordon
exit codes: 0 resumed (or was not drained), 3 no daemon, 4 permission denied, 5 the daemon answered with an error"""


def add_subcommands(cmd) -> None:
    """Register ``drain`` and ``uncordon``; ``cmd(name, help)`` is cli.py's subparser maker."""
    d = cmd("drain", "take the node out of service: stop mounting, tear every volume down, wait until clean")
    d.epilog = DRAIN_EPILOG
    d.add_argument("--dry-run", action="store_true", help="list the teardown steps without draining")
    from volumemanager.cli import seconds

    d.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS",
                   help=f"give up waiting after this long and exit 1 (default {DEFAULT_TIMEOUT_SECONDS:g}); "
                        "the node stays drained")
    d.add_argument("--json", action="store_true", help="no live view: print the final progress as JSON")
    u = cmd("uncordon", "resume service after a drain: mount again what the manifests ask for")
    u.epilog = UNCORDON_EPILOG
    u.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")


# --- talking to the daemon --------------------------------------------------------------


class _Failed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _call(args, method: str, **params):
    from volumemanager.admin_api import AdminError, DaemonUnavailable, PermissionDenied, call

    path = args.socket or DEFAULT_SOCKET
    try:
        return call(path, method, params, timeout=30.0)
    except PermissionDenied as e:
        raise _Failed(EXIT_PERMISSION, f"volumemanager {args.command}: {e}") from None
    except (DaemonUnavailable, OSError) as e:
        raise _Failed(EXIT_NO_DAEMON, f"volumemanager {args.command}: {e}; {args.command} needs the running daemon") from None
    except AdminError as e:
        raise _Failed(EXIT_DAEMON_ERROR, f"volumemanager {args.command}: the daemon refused {method}: {e}") from None


# --- describing what is left ------------------------------------------------------------


def _holder_text(h, short: bool = False) -> str:
    if not isinstance(h, dict):
        return str(h)
    pid, command, holds = h.get("pid"), h.get("command"), h.get("holds")
    text = f"pid {pid}" + (f" ({command})" if command else "")
    if holds and not short:
        text += f": {holds if isinstance(holds, str) else ', '.join(map(str, holds))}"
    return text


def item_name(item: dict) -> str:
    plugin = short_plugin_name(item.get("plugin") or "")
    if item.get("pod"):
        return f"{item['pod']} volume {item.get('volume')} ({plugin})"
    return f"staged volume {item.get('volume_id') or item.get('volume')} ({plugin})"


def item_reason(item: dict, short: bool = False) -> str:
    """Why this item is still there, for people: the refusal and its holders first.
    ``short`` (the live view): the error code and the holders, without the paths."""
    parts = []
    error = item.get("last_error") or ""
    holders = item.get("holders") or []
    if short and item.get("error_code") and holders:
        parts.append(item["error_code"])
    elif error:
        parts.append(error)
    unnamed = [h for h in holders if short or not (isinstance(h, dict) and f"pid {h.get('pid')}" in error)]
    if unnamed:
        parts.append("held by " + "; ".join(_holder_text(h, short) for h in unnamed))
    if item.get("in_progress"):
        parts.append(f"{item['in_progress']} in progress")
    elif item.get("next_retry_seconds"):
        parts.append(f"retry in {item['next_retry_seconds']:.0f}s")
    if not parts:
        parts.append("waiting for its teardown to start")
    return "; ".join(parts)


def left_lines(drained: dict) -> list[str]:
    """Everything that keeps the drain from being complete, one line each, with why."""
    lines = []
    if drained.get("waiting_for_desired_state"):
        lines.append("the desired state has not been read whole yet: nothing is unmounted before it is")
    for item in drained.get("left", []):
        path = item.get("mount_path") or item.get("device_mount_path") or ""
        lines.append(f"{item_name(item)} at {path}: {item_reason(item)}")
    for path in drained.get("orphans_left", []):
        lines.append(f"{path}: mounted under the root dir but not the daemon's (an orphan): unmount it by hand")
    busy_pods = {item.get("pod_uid") for item in drained.get("left", [])}
    for path in drained.get("pod_dirs_left", []):
        if os.path.basename(path) not in busy_pods:  # a pod with a volume left keeps its dir, of course
            lines.append(f"{path}: pod dir left behind")
    if drained.get("operations_in_flight") and not drained.get("left"):
        lines.append(f"{drained['operations_in_flight']} operations still in flight")
    return lines


def current_step(drained: dict) -> str:
    if drained.get("waiting_for_desired_state"):
        return "waiting for the desired state to be read whole"
    steps = drained.get("steps") or []
    running = [s for s in steps if (s.get("blocked_by") or "").startswith("in progress")]
    if running:
        return running[0]["detail"] + (f" (+{len(running) - 1} more)" if len(running) > 1 else "")
    ready = [s for s in steps if not s.get("blocked_by")]
    if ready:
        return ready[0]["detail"]
    if drained.get("refused"):
        return "waiting for volumes in use to be let go"
    if drained.get("complete"):
        return "clean"
    if drained.get("orphans_left") or drained.get("pod_dirs_left"):
        return "left: what the daemon does not own"
    return "waiting for operations to finish"


# --- drain ------------------------------------------------------------------------------


def cmd_drain(args) -> int:
    try:
        if args.dry_run:
            return _dry_run(args)
        started = _call(args, "drain")
        return _follow(args, started)
    except _Failed as e:
        print(str(e), file=sys.stderr)
        return e.code


def _dry_run(args) -> int:
    result = _call(args, "drain", dry_run=True)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
        return EXIT_DRAINED
    steps = result.get("steps", [])
    state = "the node is already drained; " if result.get("drained") else ""
    if not steps:
        print(f"{state}nothing to tear down: no volume in the actual state (dry run: nothing changed)")
    else:
        print(f"{state}drain would tear down {result.get('volumes', 0)} volumes in these steps "
              "(dry run: nothing changed):")
        for s in steps:
            blocked = f"  [{s['blocked_by']}]" if s.get("blocked_by") else ""
            print(f"  {s['action']:<15} {s['detail']}{blocked}")
    if result.get("waiting_for_desired_state"):
        print("note: the daemon has not read the desired state whole yet; it unmounts nothing until it has")
    print("new pods would not be mounted until 'volumemanager uncordon' (or a daemon restart)")
    return EXIT_DRAINED


def _follow(args, started: dict) -> int:
    deadline = time.monotonic() + max(0.0, args.timeout)
    if args.json:
        view = None
    elif sys.stdout.isatty():
        view = _LiveView()
    else:
        view = _PlainView()
    if view is not None:
        view.start(started)
    data: dict = {}
    drained: dict = {}
    try:
        while True:
            data = _call(args, "status")
            drained = data.get("drained") or {}
            if not drained:
                raise _Failed(EXIT_NOT_DRAINED, "volumemanager: the node is no longer drained (uncordoned, or the "
                                                "daemon restarted); nothing more to wait for")
            if view is not None:
                view.update(drained)
            if drained.get("complete") or time.monotonic() >= deadline:
                break
            time.sleep(POLL_SECONDS)
    finally:
        if view is not None:
            view.stop()
    complete = bool(drained.get("complete"))
    if args.json:
        print(json.dumps({"complete": complete, "timed_out": not complete, "root_dir": data.get("root_dir"),
                          "drained": drained}, indent=2, sort_keys=True))
    elif complete:
        print(f"node drained: no volume, no mount under {data.get('root_dir')}, no pod dir left. New pods are not "
              "mounted until 'volumemanager uncordon' (or a daemon restart).")
    else:
        print(f"timed out after {args.timeout:g}s; the node stays drained (the daemon keeps retrying). Left:")
        for line in left_lines(drained):
            print(f"  {line}")
    return EXIT_DRAINED if complete else EXIT_NOT_DRAINED


class _PlainView:
    """A line whenever the progress changes (and one per newly refused volume)."""

    def __init__(self) -> None:
        self._last = ""
        self._refused: set[str] = set()

    def start(self, started: dict) -> None:
        what = "already draining" if started.get("already_drained") else "draining"
        print(f"{what}: {started.get('volumes', 0)} volumes to tear down; not mounting", flush=True)

    def update(self, d: dict) -> None:
        total = d.get("volumes_total", 0)
        line = f"drain: {total - d.get('volumes_left', 0)}/{total} volumes torn down; {current_step(d)}"
        if line != self._last:
            self._last = line
            print(line, flush=True)
        for item in d.get("refused", []):
            text = f"  refused: {item_name(item)}: {item_reason(item)}"
            key = f"{item_name(item)}|{item.get('error_code')}"
            if key not in self._refused:
                self._refused.add(key)
                print(text, flush=True)

    def stop(self) -> None:
        pass


class _LiveView:
    """rich Progress (volumes torn down of total, the current step) with the refused volumes
    and their holders below it."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = Console()
        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]draining[/]"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("volumes torn down"), TimeElapsedColumn(), console=self.console)
        self.task = self.progress.add_task("drain", total=None)
        self.live = None

    def start(self, started: dict) -> None:
        from rich.live import Live

        self.progress.update(self.task, total=started.get("volumes") or 0)
        self.live = Live(self._render({}), console=self.console, refresh_per_second=8)
        self.live.start()

    def _render(self, d: dict):
        from rich.console import Group
        from rich.text import Text

        parts = [self.progress, Text(f"  step: {current_step(d) if d else 'starting'}", style="cyan")]
        for item in d.get("refused", []):
            parts.append(Text(f"  refused: {item_name(item)}: {item_reason(item, short=True)}", style="red"))
        return Group(*parts)

    def update(self, d: dict) -> None:
        total = d.get("volumes_total", 0)
        self.progress.update(self.task, total=total, completed=total - d.get("volumes_left", 0))
        if self.live is not None:
            self.live.update(self._render(d))

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()


# --- uncordon ---------------------------------------------------------------------------


def cmd_uncordon(args) -> int:
    try:
        result = _call(args, "uncordon")
    except _Failed as e:
        print(str(e), file=sys.stderr)
        return e.code
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    elif result.get("was_drained"):
        print("node uncordoned: mounting again what the manifests ask for")
    else:
        print("the node was not drained; nothing to do")
    return 0


def table_title_suffix(data: dict) -> str:
    """What the status table's title adds while the node is drained."""
    d = data.get("drained")
    if not d:
        return ""
    if d.get("complete"):
        return f" (drained since {d.get('since_iso')}: clean, not mounting)"
    return (f" (drained since {d.get('since_iso')}: {d.get('volumes_left', 0)} of "
            f"{d.get('volumes_total', 0)} volumes left, not mounting)")
