"""Issue 12 item 5, "a CLI that never misleads", and item 2, "offline status tells the truth":
the admin socket under a burst and under non-root callers, the exit codes of every command
when no daemon answers or the caller may not ask, `wait` on an unknown pod, a closed pipe,
whole paths in a non-tty table, `-o wide`, every `--help`, the SIGHUP log line, and status
read from the disk with the settings the daemon recorded."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.daemon_harness import daemon, daemon_factory, wait_until  # noqa: F401 - pytest fixtures
from tests.fixtures_mounts import require_root
from volumemanager import admin_api, cli
from volumemanager import exit_codes as ec
from volumemanager.daemon_record import read_record, record_path
from volumemanager.manifests.models import derived_pod_uid

pytestmark = [pytest.mark.timeout(90)]

NOBODY = 65534

POD = """\
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: demo}}
spec:
  volumes:
  - name: cache
    emptyDir: {{medium: Memory, sizeLimit: 16Mi}}
  - name: data
    hostPath: {{path: {host}, type: DirectoryOrCreate}}
"""


@pytest.fixture
def public_dir():
    """A directory any user can traverse (pytest's tmp dirs are 0700), for sockets that
    non-root children must reach."""
    d = tempfile.mkdtemp(prefix="vm-cli-test-", dir="/run")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def admin_server(public_dir):
    """A real AdminServer on a socket in ``public_dir`` answering ``status`` and ``ping``."""
    started: list[admin_api.AdminServer] = []

    def make(mode: int = 0o600) -> admin_api.AdminServer:
        path = str(public_dir / f"admin{len(started)}.sock")
        server = admin_api.AdminServer(path, {"status": lambda: {"node": "n1", "source": "daemon", "volumes": []},
                                              "ping": lambda: {"pid": os.getpid()}})
        server.start()
        os.chmod(path, mode)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def _in_child_as_nobody(body, out_dir: Path) -> tuple[int, str, str]:
    """Run ``body()`` (returning an exit code) in a forked child that has become nobody, its
    stdout/stderr in files; returns (exit code, stdout, stderr). The venv's interpreter lives
    under /root (0700), so a non-root *subprocess* cannot start it: fork the test instead."""
    out_path, err_path = out_dir / "child.out", out_dir / "child.err"
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.dup2(out_fd, 1)
            os.dup2(err_fd, 2)
            sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
            sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = body()
        except BaseException:  # noqa: BLE001 - report, never return into pytest
            import traceback

            traceback.print_exc()
            code = 98
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(out_fd)
    os.close(err_fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out_path.read_text(), err_path.read_text()


# --- the admin socket -----------------------------------------------------------------------


def test_100_status_calls_during_a_burst_of_200_raw_connects(admin_server):
    server = admin_server()
    start = threading.Barrier(300)
    failures: list[str] = []
    held: list[socket.socket] = []
    lock = threading.Lock()

    def raw(i: int) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        start.wait()
        try:
            s.connect(server.path)
        except OSError:  # a raw client may fail; only the real calls must not
            s.close()
            return
        if i % 2:  # half connect and hang up at once, half connect and say nothing
            s.close()
        else:
            with lock:
                held.append(s)

    def status() -> None:
        start.wait()
        try:
            result = admin_api.call(server.path, "status", timeout=30)
            if result.get("node") != "n1":
                failures.append(f"bad answer {result!r}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=raw, args=(i,)) for i in range(200)]
    threads += [threading.Thread(target=status) for _ in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in held:
        s.close()
    assert not failures, f"{len(failures)} of 100 status calls failed: {failures[:5]}"


def test_client_retries_eagain_on_a_full_backlog(public_dir):
    """A listener whose backlog is full makes a connect with a timeout fail at once with EAGAIN:
    the client backs off and retries until the server accepts, instead of failing."""
    path = str(public_dir / "tiny.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    fillers = []
    try:
        while True:  # fill the backlog until a connect would block
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(path)
            except BlockingIOError:
                s.close()
                break
            fillers.append(s)
            assert len(fillers) < 100

        def serve() -> None:
            time.sleep(0.3)
            accepted = [listener.accept()[0] for _ in range(len(fillers) + 1)]
            for conn in accepted:
                conn.settimeout(5)
                line = conn.makefile("rb").readline()
                if line:
                    conn.sendall(b'{"ok": true, "result": "pong"}\n')
                conn.close()

        t = threading.Thread(target=serve)
        t.start()
        for s in fillers:
            s.close()  # closed but still queued: the server accepts them, reads EOF
        assert admin_api.call(path, "ping", timeout=5) == "pong"
        t.join(10)
    finally:
        listener.close()


def test_200_non_root_calls_each_get_a_clean_denial(admin_server, tmp_path):
    require_root()
    loose = admin_server(mode=0o666)  # reaches the daemon: its SO_PEERCRED denial
    strict = admin_server(mode=0o600)  # refused by the kernel: EACCES on connect

    def body() -> int:
        outcomes: dict[str, int] = {}
        for i in range(200):
            path = loose.path if i % 4 else strict.path
            try:
                admin_api.call(path, "status", timeout=10)
                key = "answered"
            except admin_api.PermissionDenied as e:
                key = "denied" if "permission denied" in str(e) else f"denied oddly: {e}"
            except Exception as e:  # noqa: BLE001
                key = f"{type(e).__name__}: {e}"
            outcomes[key] = outcomes.get(key, 0) + 1
        print(json.dumps(outcomes))
        return 0

    code, out, err = _in_child_as_nobody(body, tmp_path)
    assert code == 0, err
    assert json.loads(out) == {"denied": 200}


# --- exit codes -------------------------------------------------------------------------------


def _run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "volumemanager", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_exit_codes_when_no_daemon_answers(tmp_path):
    common = ["--root-dir", str(tmp_path / "root"), "--socket", str(tmp_path / "none.sock")]
    for args, code in ((["explain", "demo/web"], ec.NO_DAEMON), (["plan"], ec.NO_DAEMON),
                       (["wait", "demo/web", "--timeout", "0.5"], ec.NO_DAEMON)):
        r = _run_cli(*args[:1], *common, *args[1:])
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert "no daemon answers" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # A socket nobody listens on: refused, same code.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    r = _run_cli("explain", "--socket", str(tmp_path / "dead.sock"), "--root-dir", str(tmp_path / "root"), "x/y")
    assert r.returncode == ec.NO_DAEMON and "refused" in r.stderr
    r = _run_cli("status", "--json", *common)
    assert r.returncode == 0
    assert json.loads(r.stdout)["source"] == "disk"


def test_permission_denied_has_its_own_exit_code_and_no_disk_fallback(admin_server, tmp_path):
    require_root()
    loose = admin_server(mode=0o666)
    strict = admin_server(mode=0o600)
    for server in (loose, strict):
        for command in (["status"], ["status", "--json"], ["explain", "demo/web"], ["plan"],
                        ["wait", "demo/web", "--timeout", "5"]):
            argv = [command[0], "--socket", server.path, "--root-dir", str(tmp_path), *command[1:]]
            code, out, err = _in_child_as_nobody(lambda argv=argv: cli.main(argv), tmp_path)
            assert code == ec.PERMISSION_DENIED, (command, out, err)
            assert out == "", f"{command}: nothing may be printed as if it were the answer: {out}"
            assert "permission denied" in err and "Traceback" not in err, err
            assert len(err.strip().splitlines()) == 1, err


def test_help_of_every_command_has_a_description_and_shows_defaults(capsys):
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, cli.argparse._SubParsersAction))
    for name, p in sub.choices.items():
        assert p.description, f"{name} --help has no description"
        text = p.format_help()
        assert "examples:" in text or name in ("drain", "uncordon"), name
    wait_help = sub.choices["wait"].format_help()
    assert "(default: 120)" in wait_help
    assert "exit codes:" in wait_help and "3 no daemon answered" in wait_help
    assert "(default: info)" in sub.choices["daemon"].format_help()
    explain_help = sub.choices["explain"].format_help()
    assert "3 no daemon answered" in explain_help and "4 permission denied" in explain_help
    assert sub.choices["install-unit"].description


# --- wait -------------------------------------------------------------------------------------


def test_wait_on_an_unknown_pod_exits_2_at_once(daemon):
    started = time.monotonic()
    r = daemon.cli("wait", "demo/nosuch", "--timeout", "60", check=False)
    elapsed = time.monotonic() - started
    assert r.returncode == ec.NO_SUCH_POD, r.stdout + r.stderr
    assert "no pod demo/nosuch" in r.stdout
    assert elapsed < 5, f"took {elapsed:.1f}s"
    # A pod written just before the wait is found, not "no such pod".
    daemon.write_manifest("web.yaml", POD.format(host=daemon.base / "h"))
    assert daemon.cli("wait", "demo/web", "--timeout", "30").returncode == 0


# --- output -----------------------------------------------------------------------------------


def test_non_tty_table_shows_whole_paths_and_wide_columns(daemon):
    daemon.write_manifest("web.yaml", POD.format(host=daemon.base / "h"))
    assert daemon.cli("wait", "demo/web", "--timeout", "30").returncode == 0
    uid = derived_pod_uid("demo", "web")
    cache = str(daemon.root / "pods" / uid / "volumes" / "kubernetes.io~empty-dir" / "cache")
    r = daemon.cli("status")
    assert cache in r.stdout, r.stdout
    assert "…" not in r.stdout and "volumes on testnode" in r.stdout
    r = daemon.cli("status", "-o", "wide")
    header = next(line for line in r.stdout.splitlines() if line.startswith("POD"))
    for col in ("DEVICE", "DEVICE MOUNT PATH", "ERROR CODE", "NEXT RETRY"):
        assert col in header
    assert cache in r.stdout


def test_a_closed_pipe_ends_quietly(tmp_path):
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    # Enough rows that the output is far larger than a pipe's buffer.
    (manifests / "many.yaml").write_text("---\n".join(
        f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: demo}}\n"
        f"spec:\n  volumes:\n  - name: scratch\n    emptyDir: {{}}\n" for i in range(400)))
    common = f"--root-dir {tmp_path / 'root'} --socket {tmp_path / 'none.sock'} --manifest-dir {manifests}"
    exe = f"{sys.executable} -m volumemanager"
    for fmt in ("--json", "", "-o wide"):
        r = subprocess.run(["bash", "-c", f"{exe} status {common} {fmt} | head -1; exit ${{PIPESTATUS[0]}}"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode in (0, ec.BROKEN_PIPE), (fmt, r.returncode, r.stderr)
        assert r.stderr == "", f"status {fmt} | head: {r.stderr}"
        assert len(r.stdout.splitlines()) == 1


# --- SIGHUP and the daemon's record -----------------------------------------------------------


def test_daemon_records_its_settings_and_logs_each_sighup(daemon):
    record = read_record(str(daemon.root))
    assert record is not None
    assert record["manifest_dir"] == str(daemon.manifests)
    assert record["node_name"] == "testnode" and record["socket"] == str(daemon.socket)
    assert record["pid"] == daemon.proc.pid and record["stopped_at"] is None
    assert record["plugins_registry_dir"] == str(daemon.registry)
    assert record["sources"] and str(daemon.manifests) in record["sources"][0]
    written = record["written_at"]
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: re-reading config and manifests" in daemon.log(), 10, what="the SIGHUP line")
    wait_until(lambda: "SIGHUP: manifests re-read" in daemon.log(), 10, what="what the SIGHUP re-read")
    wait_until(lambda: read_record(str(daemon.root))["written_at"] > written, 10, what="the record rewritten")
    assert not [p for p in os.listdir(os.path.dirname(record_path(str(daemon.root)))) if p.endswith(".tmp")]


def test_offline_status_uses_the_recorded_settings(daemon_factory, tmp_path):
    d = daemon_factory()
    d.write_manifest("web.yaml", POD.format(host=tmp_path / "h"))
    assert d.cli("wait", "demo/web", "--timeout", "30").returncode == 0
    assert d.stop() == 0
    assert len(d.mounts()) == 2, "stopping the daemon must not unmount"
    # No --manifest-dir, no --node-name: the recorded ones are used.
    r = d.cli("status", "--json")
    st = json.loads(r.stdout)
    assert st["source"] == "disk" and st["node"] == "testnode"
    assert st["manifest_dir"] == str(d.manifests)
    assert st["orphans"] == [] and st["unclassified_mounts"] == []
    assert {v["volume"]: v["state"] for v in st["volumes"]} == {"cache": "mounted", "data": "mounted"}
    assert "read from the disk" in st["note"] and "clean stop" in st["note"]
    assert "operations in flight" in st["unknown"]
    assert st["record"]["found"] is True and st["record"]["stopped_at"]
    # Pointed at another (empty) manifest dir, the volumes the daemon's manifests want are
    # still not orphans.
    other = tmp_path / "other"
    other.mkdir()
    st = json.loads(d.cli("status", "--json", "--manifest-dir", str(other)).stdout)
    assert st["volumes"] == [] and st["orphans"] == []
    assert "differs from the daemon's" in st["note"]
    # The table says it read the disk and what it could not know.
    table = d.cli("status").stdout
    assert "read from the disk" in table and "not known without the daemon" in table


def test_offline_status_without_a_record_says_so_and_calls_nothing_an_orphan(tmp_path):
    require_root()
    root = tmp_path / "root"
    pod_dir = root / "pods" / "u1" / "volumes" / "kubernetes.io~empty-dir" / "cache"
    pod_dir.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(pod_dir)], check=True)
    try:
        r = _run_cli("status", "--json", "--root-dir", str(root), "--socket", str(tmp_path / "none.sock"),
                     "--manifest-dir", str(tmp_path / "missing"))
        st = json.loads(r.stdout)
        assert f"no record of a daemon under {root}" in st["note"]
        assert st["orphans"] == []
        assert [m["mount_path"] for m in st["unclassified_mounts"]] == [str(pod_dir)]
        assert any("desired state" in u for u in st["unknown"])
    finally:
        subprocess.run(["umount", str(pod_dir)], check=True)


def test_sighup_rereads_the_config_under_the_flags(daemon_factory, tmp_path):
    """--log-level debug (a flag) still wins after a SIGHUP re-reads a config file without it."""
    config = tmp_path / "config.yaml"
    config.write_text("log_format: text\n")
    d = daemon_factory(["--config", str(config)])
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "SIGHUP: re-read config" in d.log(), 10, what="the config re-read")
    line = next(x for x in d.log().splitlines() if "SIGHUP: re-read config" in x)
    assert "log settings unchanged" in line, line
