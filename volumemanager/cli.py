"""The ``volumemanager`` command: the daemon and the tools that ask it (or the disk) questions."""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

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
  volumemanager status --json | jq '.volumes[] | select(.state != "mounted")'""",
    "explain": """examples:
  volumemanager explain demo/web
  volumemanager explain demo/web data
exit codes: 0 mounted, 1 not mounted, 2 no such pod""",
    "wait": """examples:
  volumemanager wait demo/web --timeout 60 && start-my-workload
exit codes: 0 mounted, 1 timed out (the explanation is printed), 2 no such pod""",
    "plan": """examples:
  volumemanager plan""",
    "install-unit": """examples:
  volumemanager install-unit --dry-run
  volumemanager install-unit && systemctl daemon-reload && systemctl enable --now volumemanager""",
}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root-dir", default=None, help=f"state and mounts live here (default {DEFAULT_ROOT_DIR})")
    p.add_argument("--socket", default=None, help=f"the daemon's admin socket (default {DEFAULT_SOCKET})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="volumemanager",
        description="A node-side volume manager: mounts the volumes that pod manifests ask for, and explains itself.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="run 'volumemanager COMMAND --help' for each command's flags and examples",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOGS.get(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common(p)
        return p

    d = cmd("daemon", "run the reconciler until SIGTERM/SIGINT (mounts stay in place on exit)")
    d.add_argument("--config", default=None, help="YAML file with any of the daemon's options (flags win)")
    d.add_argument("--manifest-dir", default=None, help=f"Pod/PV/PVC/Secret manifests (default {DEFAULT_MANIFEST_DIR})")
    d.add_argument("--plugins-registry-dir", default=None, help="CSI plugin registration sockets (default <root-dir>/plugins_registry)")
    d.add_argument("--csi-driver", action="append", default=None, metavar="NAME=unix:///path",
                   help="register a CSI driver statically (repeatable)")
    d.add_argument("--node-name", default=None, help="this node's name (default: the host name)")
    d.add_argument("--metrics-address", default=None, help="HOST:PORT for Prometheus /metrics (default 127.0.0.1:9469; empty disables)")
    d.add_argument("--log-format", default=None, choices=["text", "json"])
    d.add_argument("--log-level", default=None, help="debug, info, warning, error")
    d.add_argument("--csi-timeout", type=float, default=None, metavar="SECONDS",
                   help="deadline of every CSI node call (default 120, the kubelet's); past it the volume is uncertain")

    s = cmd("status", "desired vs actual, one row per (pod, volume), plus orphans, drivers and manifest errors")
    s.add_argument("--json", action="store_true", help="print JSON (see INTERFACE.md for the fields)")
    s.add_argument("--manifest-dir", default=None, help="used only when no daemon answers")

    e = cmd("explain", "why a volume is (not) mounted: the chain of causes")
    e.add_argument("pod", metavar="NAMESPACE/POD")
    e.add_argument("volume", nargs="?", default=None)
    e.add_argument("--json", action="store_true")

    w = cmd("wait", "block until every volume of the pod is mounted")
    w.add_argument("pod", metavar="NAMESPACE/POD")
    w.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS")

    pl = cmd("plan", "what the reconciler would do next, without doing it")
    pl.add_argument("--json", action="store_true")

    iu = sub.add_parser("install-unit", help="write the systemd unit with this installation's executable path",
                        epilog=EPILOGS["install-unit"], formatter_class=argparse.RawDescriptionHelpFormatter)
    from volumemanager import install_unit

    install_unit.add_arguments(iu)
    return parser


def _socket(args) -> str:
    return args.socket or DEFAULT_SOCKET


def _root(args) -> str:
    return args.root_dir or DEFAULT_ROOT_DIR


def _call(args, method: str, timeout: float | None = 30.0, **params):
    from volumemanager.admin_api import call

    return call(_socket(args), method, params, timeout=timeout)


# --- status -----------------------------------------------------------------------------


def cmd_status(args) -> int:
    from volumemanager.admin_api import DaemonUnavailable

    try:
        data = _call(args, "status")
    except DaemonUnavailable:
        from volumemanager.offline import offline_status

        data = offline_status(_root(args), args.manifest_dir or DEFAULT_MANIFEST_DIR, socket.gethostname())
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    print_status_table(data)
    return 0


STATE_STYLE = {"mounted": "green", "pending": "yellow", "waiting": "yellow", "error": "red",
               "uncertain": "magenta", "unmounting": "cyan"}


def print_status_table(data: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if data.get("source") == "disk":
        console.print(f"[bold]{data.get('note', 'no daemon answered')}[/]")
    table = Table(title=f"volumes on {data.get('node')}", show_lines=False)
    for col in ("POD", "VOLUME", "PLUGIN", "STATE", "PATH / REASON"):
        table.add_column(col)
    for v in data.get("volumes", []):
        state = v["state"]
        detail = v.get("mount_path") or ""
        if state != "mounted":
            detail = v.get("last_error") or v.get("reason") or detail
            if v.get("next_retry_seconds"):
                detail += f" (retry in {v['next_retry_seconds']:.0f}s)"
        table.add_row(v["pod"], v["volume"], (v.get("plugin") or "").removeprefix("kubernetes.io/"),
                      f"[{STATE_STYLE.get(state, 'white')}]{state}[/]", detail)
    console.print(table)
    if data.get("orphans"):
        console.print("[bold]orphans[/] (mounted under the root dir, not desired):")
        for o in data["orphans"]:
            console.print(f"  {o['mount_path']}: {o['reason']}")
    if data.get("drivers"):
        console.print("[bold]CSI drivers[/]:")
        for d in data["drivers"]:
            console.print(f"  {d['name']} at {d['endpoint']} ({', '.join(d.get('capabilities', [])) or 'no capabilities'})")
    if data.get("manifest_errors"):
        console.print("[bold red]manifest errors[/]:")
        for e in data["manifest_errors"]:
            console.print(f"  {e.get('text') or e}", markup=False)


# --- explain / wait / plan --------------------------------------------------------------


def _print_explanation(body: dict) -> None:
    for line in body.get("lines", []):
        print(line)
    for v in body.get("volumes", []):
        print(f"{v['volume']}: {v['state']}")
        for line in v["lines"]:
            print(f"  - {line}")


def cmd_explain(args) -> int:
    from volumemanager.admin_api import DaemonUnavailable

    try:
        body = _call(args, "explain", pod=args.pod, volume=args.volume)
    except DaemonUnavailable as e:
        print(f"{e}; explain needs the running daemon (try 'volumemanager status')", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        _print_explanation(body)
    return int(body.get("exit_code", 1))


def cmd_wait(args) -> int:
    from volumemanager.admin_api import DaemonUnavailable

    deadline = time.monotonic() + args.timeout
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            body = _call(args, "wait", remaining + 30, pod=args.pod, timeout_seconds=remaining)
            break
        except DaemonUnavailable as e:
            if time.monotonic() >= deadline:
                print(f"timed out: {e}", file=sys.stderr)
                return 1
            time.sleep(WAIT_CONNECT_RETRY_SECONDS)
    if body.get("mounted"):
        return 0
    if not body.get("found", True):
        _print_explanation(body)
        return 2
    print(f"timed out after {args.timeout:g}s waiting for {args.pod}:")
    _print_explanation(body)
    return 1


def cmd_plan(args) -> int:
    from volumemanager.admin_api import DaemonUnavailable

    try:
        actions = _call(args, "plan")
    except DaemonUnavailable as e:
        print(f"{e}; plan needs the running daemon", file=sys.stderr)
        return 0
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
                                               "csi_timeout")}
        return run_daemon({k: v for k, v in flags.items() if v is not None})
    if args.command == "install-unit":
        from volumemanager import install_unit

        return install_unit.run(args)
    handler = {"status": cmd_status, "explain": cmd_explain, "wait": cmd_wait, "plan": cmd_plan}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
