"""Helper commands started while gRPC is busy must run: the daemon forks them with a
preexec_fn (PR_SET_PDEATHSIG), and gRPC's fork support aborted such children (SIGABRT,
"epoll_wait error: Bad file descriptor") once a CSI driver was being called; the benchmark
saw a dozen failed formats per thousand volumes. volumemanager.csi turns fork support off."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import subprocess, sys, threading
    import volumemanager.csi  # sets the environment before gRPC is imported, as in the daemon
    from volumemanager.csi.client import CSINodeClient
    from mount_utils.child import die_with_parent

    client = CSINodeClient(sys.argv[1], timeout=5, info_timeout=5)
    stop = threading.Event()

    def call_forever():
        while not stop.is_set():
            client.node_get_capabilities()

    callers = [threading.Thread(target=call_forever) for _ in range(4)]
    for t in callers:
        t.start()
    try:
        codes = [subprocess.run(["true"], preexec_fn=die_with_parent).returncode for _ in range(200)]
    finally:
        stop.set()
        for t in callers:
            t.join()
        client.close()
    bad = [c for c in codes if c != 0]
    print("failed:", bad)
    sys.exit(1 if bad else 0)
    """
)


@pytest.mark.timeout(90)
def test_helper_commands_run_while_a_driver_is_called(csi_loop):
    plugin = csi_loop()
    env = {k: v for k, v in os.environ.items() if k != "GRPC_ENABLE_FORK_SUPPORT"}
    # Its own session: when the bug is back, a forked child hangs before exec, and killing
    # the group (by the child's PID) must take that grandchild along.
    proc = subprocess.Popen([sys.executable, "-c", CHILD, plugin.endpoint], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"helper commands hung after gRPC was used: {err[-2000:]}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, (out, err[-2000:])
