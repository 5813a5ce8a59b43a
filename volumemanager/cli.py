"""The ``volumemanager`` command: the daemon and the tools that ask it (or the disk) questions."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from operation_executor.types import short_plugin_name
from volumemanager import exit_codes as ec
from volumemanager.config import DEFAULT_MANIFEST_DIR, DEFAULT_ROOT_DIR, DEFAULT_SOCKET

# How often `wait` re-tries the socket while no daemon answers yet.
WAIT_CONNECT_RETRY_SECONDS = 0.2

EPILOGS = {
    "daemon": """examples:
  volumemanager daemon --manifest-dir /etc/volumemanager/manifests
  volumemanager daemon --root-dir /var/lib/volumemanager --csi-driver csi.example.com=unix:///run/csi/csi.sock
  volumemanager daemon --config /etc/volumemanager/config.yaml --log-format json""",
    "status": """examples:
  volumemanager status
  volumemanager status -o wide
  volumemanager status --json | jq '.volumes[] | select(.state != "mounted")'
when no daemon answers, status reads the disk (using the settings the daemon recorded under
the root dir) and says so, and what it could not know.
exit codes: 0 (also when read from the disk), 4 permission denied, 5 the daemon answered with an error,
  141 stdout closed early (e.g. piped into head)""",
    "explain": """examples:
  volumemanager explain demo/web
  volumemanager explain demo/web data
exit codes: 0 mounted, 1 not mounted, 2 no such pod, 3 no daemon answered, 4 permission denied,
  5 the daemon answered with an error""",
    "wait": """examples:
  volumemanager wait demo/web --timeout 60 && start-my-workload
exit codes: 0 mounted, 1 timed out (the explanation is printed), 2 no such pod (answered as soon as
  the daemon has read its desired state), 3 no daemon answered before the timeout, 4 permission
  denied, 5 the daemon answered with an error""",
    "plan": """examples:
  volumemanager plan
exit codes: 0, 3 no daemon answered, 4 permission denied, 5 the daemon answered with an error""",
    "install-unit": """examples:
  volumemanager install-unit --dry-run
  volumemanager install-unit && systemctl daemon-reload && systemctl enable --now volumemanager""",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples epilog as written and shows every flag's default: "(default: X)"
    is added unless the help already names its default or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text and default not in (None, False, argparse.SUPPRESS)
                and not isinstance(default, list)):
            shown = f"{default:g}" if isinstance(default, float) else default
            text += f" (default: {shown})"
        return text


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root-dir", default=None, help=f"state and mounts live here (default {DEFAULT_ROOT_DIR})")
    p.add_argument("--socket", default=None, help=f"the daemon's admin socket (default {DEFAULT_SOCKET})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volumemanager",
        description="A node-side volume manager: mounts the volumes that pod manifests ask for, and explains itself.",
        formatter_class=HelpFormatter,
        epilog="run 'volumemanager COMMAND --help' for each command's flags and examples\n\n" + ec.EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOGS.get(name),
                           formatter_class=HelpFormatter)
        _add_common(p)
        return p

    d = cmd("daemon", "run the reconciler until SIGTERM/SIGINT (mounts stay in place on exit)")
    d.add_argument("--config", default=None, help="YAML file with any of the daemon's options (flags win)")
    d.add_argument("--manifest-dir", default=None, help=f"Pod/PV/PVC/Secret manifests (default {DEFAULT_MANIFEST_DIR})")
    d.add_argument("--plugins-registry-dir", default=None, help="CSI plugin registration sockets (default <root-dir>/plugins_registry)")
    d.add_argument("--csi-driver", action="append", default=None, metavar="NAME=unix:///path",
                   help="register a CSI driver statically (repeatable)")
    d.add_argument("--csi-controller", action="append", default=None, metavar="NAME=unix:///path",
                   help="the Controller service of CSI driver NAME on its own socket (repeatable; "
                        "default: the driver's socket, when it advertises CONTROLLER_SERVICE)")
    d.add_argument("--volume-plugin-dir", default=None, metavar="DIR",
                   help="FlexVolume drivers, <DIR>/<vendor>~<driver>/<driver>, picked up when they appear "
                        "(default /usr/libexec/kubernetes/kubelet-plugins/volume/exec, the kubelet's)")
    d.add_argument("--kubeconfig", default=None, metavar="PATH",
                   help="also take the pods bound to --node-name (and their claims, volumes, secrets) from this "
                        "kubeconfig's API server (default: in-cluster config when run in a pod, else none)")
    d.add_argument("--node-name", default=None, help="this node's name (default: the host name)")
    d.add_argument("--metrics-address", default=None, help="HOST:PORT for Prometheus /metrics (default 127.0.0.1:9469; empty disables)")
    d.add_argument("--log-format", default=None, choices=["text", "json"], help="log line format (default: text)")
    d.add_argument("--log-level", default=None, help="debug, info, warning, error (default: info)")
    d.add_argument("--csi-timeout", type=float, default=None, metavar="SECONDS",
                   help="deadline of every CSI node call (default 120, the kubelet's); past it the volume is uncertain")

    s = cmd("status", "desired vs actual, one row per (pod, volume), plus orphans, drivers and manifest errors")
    s.add_argument("--json", action="store_true", help="print JSON (docs/contract.md lists every field)")
    s.add_argument("-o", "--output", choices=["table", "wide"], default="table",
                   help="table format; wide adds the device, device mount path, error code and next retry")
    s.add_argument("--manifest-dir", default=None,
                   help="used only when no daemon answers (default: the one the daemon recorded under the root dir)")
    s.add_argument("--node-name", default=None,
                   help="used only when no daemon answers (default: the one the daemon recorded, else the host name)")

    e = cmd("explain", "why a volume is (not) mounted: the chain of causes")
    e.add_argument("pod", metavar="NAMESPACE/POD")
    e.add_argument("volume", nargs="?", default=None, help="one volume of the pod (default: all of them)")
    e.add_argument("--json", action="store_true", help="print JSON")

    w = cmd("wait", "block until every volume of the pod is mounted")
    w.add_argument("pod", metavar="NAMESPACE/POD")
    w.add_argument("--timeout", type=seconds, default=120.0, metavar="SECONDS",
                   help="give up after this long, also while no daemon answers yet")

    pl = cmd("plan", "what the reconciler would do next, without doing it")
    pl.add_argument("--json", action="store_true", help="print JSON")

    from volumemanager import drain_cli

    drain_cli.add_subcommands(cmd)

    iu_help = "write the systemd unit with this installation's executable path"
    iu = sub.add_parser("install-unit", help=iu_help,
                        description=f"{iu_help}\nto /etc/systemd/system/volumemanager.service, and the example config "
                                    "to /etc/volumemanager/config.yaml\nunless a config exists there",
                        epilog=EPILOGS["install-unit"], formatter_class=HelpFormatter)
    from volumemanager import install_unit

    install_unit.add_arguments(iu)
    return parser


def _socket(args) -> str:
    return args.socket or DEFAULT_SOCKET


def _root(args) -> str:
    return args.root_dir or DEFAULT_ROOT_DIR


def seconds(text: str) -> float:
    """argparse type of a ``--timeout``: a number of seconds, not negative (nor nan/inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def _call(args, method: str, timeout: float | None = 30.0, **params):
    from volumemanager.admin_api import call

    return call(_socket(args), method, params, timeout=timeout)


# --- status -----------------------------------------------------------------------------


def cmd_status(args) -> int:
    from volumemanager.admin_api import DaemonUnavailable

    try:
        data = _call(args, "status")
    except DaemonUnavailable as e:
        # Permission denied is not caught here: a disk read would look like the answer.
        from volumemanager.offline import offline_status

        data = offline_status(_root(args), args.manifest_dir, args.node_name, why=str(e))
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return ec.OK
    print_status_table(data, wide=args.output == "wide")
    return ec.OK


STATE_STYLE = {"mounted": "green", "pending": "yellow", "waiting": "yellow", "error": "red",
               "uncertain": "magenta", "unmounting": "cyan"}


WIDE_COLUMNS = ("DEVICE", "DEVICE MOUNT PATH", "ERROR CODE", "NEXT RETRY")


def _status_rows(data: dict, wide: bool) -> list[tuple[str, ...]]:
    """One tuple of cell texts per volume, whole (never shortened)."""
    out = []
    for v in data.get("volumes", []):
        state = v["state"]
        detail = v.get("mount_path") or ""
        if state != "mounted":
            # A row with nothing to report but a wait (a volume kept while a source is not read
            # whole) says so, rather than showing a bare path beside "unmounting".
            waiting = f"waiting for {v['waiting_for']}" if v.get("waiting_for") else None
            if data.get("source") == "disk" and detail:
                # Read from the disk: the path is where it would be mounted, not a mount.
                detail = f"not mounted at {detail} (why, and what comes next, only the daemon knows)"
            detail = v.get("last_error") or v.get("reason") or waiting or detail
            if v.get("next_retry_seconds"):
                detail += f" (retry in {v['next_retry_seconds']:.0f}s)"
        row = (v["pod"], v["volume"], short_plugin_name(v.get("plugin") or ""), state, detail)
        if wide:
            retry = v.get("next_retry_seconds")
            row += (v.get("device_path") or "", v.get("device_mount_path") or "", v.get("error_code") or "",
                    f"{retry:.0f}s" if retry else "")
        out.append(row)
    return out


def print_status_table(data: dict, wide: bool = False) -> None:
    """A rich table on a terminal (long cells wrap, never cut); plain columns with whole
    paths otherwise, so that a pipe or a log keeps every path and rows stay distinct."""
    from volumemanager.drain_cli import table_title_suffix

    title = f"volumes on {data.get('node')}{table_title_suffix(data)}"
    columns = ("POD", "VOLUME", "PLUGIN", "STATE", "PATH / REASON") + (WIDE_COLUMNS if wide else ())
    rows = _status_rows(data, wide)
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        console = Console()
        table = Table(title=title, show_lines=False)
        for col in columns:
            table.add_column(col, overflow="fold")
        for row in rows:
            cells = [escape(c) for c in row]
            cells[3] = f"[{STATE_STYLE.get(row[3], 'white')}]{cells[3]}[/]"
            table.add_row(*cells)
        header = (lambda text: console.print(f"[bold]{escape(text)}[/]"))
    else:
        console = None
        header = print
    if data.get("source") == "disk":
        header(data.get("note", "no daemon answered: read from the disk"))
        if data.get("unknown"):
            header(f"not known without the daemon: {', '.join(data['unknown'])}")
    if console is not None:
        console.print(table)
    else:
        print(title)
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
        for line in [columns, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())

    def section(title: str, lines: list[str]) -> None:
        if not lines:
            return
        header(title)
        for line in lines:
            if console is not None:
                console.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)
            else:
                print(f"  {line}")

    section("orphans (mounted under the root dir, not desired):",
            [f"{o['mount_path']}: {o['reason']}" for o in data.get("orphans", [])])
    section("mounts under the root dir that may or may not be desired:",
            [f"{o['mount_path']}: {o['reason']}" for o in data.get("unclassified_mounts", [])])
    section("CSI drivers:", [f"{d['name']} at {d['endpoint']} ({', '.join(d.get('capabilities', [])) or 'no capabilities'})"
                             + _controller_part(d) for d in data.get("drivers", [])])
    # Claims the controller side handles (provisioned, pending on a class, released); a claim
    # bound in the manifests is already in its volume's row.
    section("claims:", [_claim_line(c) for c in data.get("claims", [])
                        if c.get("provisioned_by") or c.get("phase") in ("Pending", "Released")])
    section("manifest errors:", [str(e.get("text") or e) if isinstance(e, dict) else str(e)
                                 for e in data.get("manifest_errors", [])])
    section("desired-state sources not read whole (nothing is torn down until they are):",
            [_source_line(src) for src in data.get("sources", []) if src.get("state") != "synced"])


def _controller_part(d: dict) -> str:
    """"; controller at E (CREATE_DELETE_VOLUME, ...)" for a driver with a Controller service."""
    if not d.get("controller_endpoint"):
        return ""
    caps = ", ".join(d.get("controller_capabilities") or []) or "no capabilities"
    where = "" if d["controller_endpoint"] == d.get("endpoint") else f" at {d['controller_endpoint']}"
    return f"; controller{where} ({caps})"


def _claim_line(c: dict) -> str:
    """One claim of status --json ``claims`` for the status table."""
    line = f"{c.get('claim') or '?'}: {c.get('phase')}"
    if c.get("pv"):
        line += f" {c['pv']}"
    if c.get("volume_handle"):
        line += f" (volume {c['volume_handle']})"
    if c.get("in_progress"):
        line += f"; {c['in_progress']} in progress"
    err = c.get("last_error")
    if err:
        line += f"; {err.get('operation')} failed with {err.get('code')}: {err.get('message')}"
        if c.get("next_retry_seconds") is not None:
            line += f" (retry in {c['next_retry_seconds']:.0f} s)"
    elif c.get("waiting_for"):
        line += f"; waiting for {c['waiting_for']}"
    return line


def _source_line(src: dict) -> str:
    """"manifest-dir:/x failed since T: why" for the status table."""
    if src.get("state") != "failed":
        return f"{src.get('name')} {src.get('state')}"
    since = src.get("since")
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since)) if isinstance(since, (int, float)) else "?"
    return f"{src.get('name')} failed since {when}: {src.get('error')}"


# --- explain / wait / plan --------------------------------------------------------------


def _print_explanation(body: dict) -> None:
    for line in body.get("lines", []):
        print(line)
    for v in body.get("volumes", []):
        print(f"{v['volume']}: {v['state']}")
        for line in v["lines"]:
            print(f"  - {line}")


# explain, wait and plan let DaemonUnavailable / PermissionDenied / AdminError reach main(),
# which turns them into one line on stderr and the exit codes of ``exit_codes``.


def cmd_explain(args) -> int:
    body = _call(args, "explain", pod=args.pod, volume=args.volume)
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        _print_explanation(body)
    return int(body.get("exit_code", ec.NOT_MOUNTED))


def cmd_wait(args) -> int:
    from volumemanager.admin_api import DaemonUnavailable

    deadline = time.monotonic() + args.timeout
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            body = _call(args, "wait", remaining + 30, pod=args.pod, timeout_seconds=remaining)
            break
        except DaemonUnavailable as e:  # the daemon may be starting: keep trying until the deadline
            if time.monotonic() >= deadline:
                raise DaemonUnavailable(f"{e} (gave up after {args.timeout:g}s)") from None
            time.sleep(WAIT_CONNECT_RETRY_SECONDS)
    if body.get("mounted"):
        return ec.OK
    if not body.get("found", True) and not body.get("desired_state_unknown"):
        _print_explanation(body)
        return ec.NO_SUCH_POD
    print(f"timed out after {args.timeout:g}s waiting for {args.pod}:")
    _print_explanation(body)
    return ec.NOT_MOUNTED


def cmd_plan(args) -> int:
    actions = _call(args, "plan")
    if args.json:
        print(json.dumps(actions, indent=2))
        return 0
    if not actions:
        print("nothing to do: the actual state matches the desired state")
    for a in actions:
        blocked = f"  [{a['blocked_by']}]" if a.get("blocked_by") else ""
        print(f"{a['action']:<15} {a['detail']}{blocked}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "daemon":
        from volumemanager.daemon import run_daemon

        flags = {k: getattr(args, k) for k in ("root_dir", "socket", "config", "manifest_dir", "plugins_registry_dir",
                                               "csi_driver", "node_name", "metrics_address", "log_format", "log_level",
                                               "csi_timeout", "csi_controller", "volume_plugin_dir",
                                               "kubeconfig")}
        return run_daemon({k: v for k, v in flags.items() if v is not None})
    if args.command == "install-unit":
        from volumemanager import install_unit

        return install_unit.run(args)
    from volumemanager import drain_cli

    handler = {"status": cmd_status, "explain": cmd_explain, "wait": cmd_wait, "plan": cmd_plan,
               "drain": drain_cli.cmd_drain, "uncordon": drain_cli.cmd_uncordon}[args.command]
    return run_client_command(args.command, handler, args)


def run_client_command(name: str, handler, args) -> int:
    """Run a command that asks the daemon; failures to ask become one line on stderr and the
    shared exit codes (``exit_codes``), and a closed stdout (``| head``) ends quietly."""
    from volumemanager.admin_api import AdminError, DaemonUnavailable, PermissionDenied

    try:
        code = handler(args)
        sys.stdout.flush()
        return code
    except PermissionDenied as e:
        print(f"volumemanager {name}: {e}", file=sys.stderr)
        return ec.PERMISSION_DENIED
    except DaemonUnavailable as e:
        print(f"volumemanager {name}: {e}; {name} needs the running daemon", file=sys.stderr)
        return ec.NO_DAEMON
    except AdminError as e:
        print(f"volumemanager {name}: the daemon answered: {e}", file=sys.stderr)
        return ec.DAEMON_ERROR
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say, and the interpreter must not
        # complain about flushing stdout at exit either.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except OSError:
            pass
        return ec.BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
