"""check_reachable against a fake NFS host in a network namespace: real sockets, real routes."""

from __future__ import annotations

import time

import pytest

from operation_executor.errors import TransientError
from volumemanager.plugins.netprobe import check_reachable

pytestmark = pytest.mark.timeout(30)


def _unreachable(fn) -> tuple[TransientError, float]:
    start = time.monotonic()
    with pytest.raises(TransientError) as info:
        fn()
    assert info.value.code == "NFS_UNREACHABLE"
    return info.value, time.monotonic() - start


def test_fake_server_answering_rpc_null_is_reachable(nfs_host, servers):
    servers("rpc")
    assert check_reachable(nfs_host.peer_ip, timeout=2.0) == nfs_host.peer_ip


def test_refused_once_the_server_is_killed(nfs_host, servers):
    proc = servers("rpc")
    assert check_reachable(nfs_host.peer_ip, timeout=2.0) == nfs_host.peer_ip
    nfs_host.stop_server(proc)
    err, took = _unreachable(lambda: check_reachable(nfs_host.peer_ip, timeout=2.0))
    assert "connection refused" in err.message
    assert nfs_host.peer_ip in err.message and "2049" in err.message
    assert took < 1.0


def test_no_route_fails_fast(nfs_host):
    err, took = _unreachable(lambda: check_reachable(nfs_host.no_route_ip, timeout=3.0))
    assert "no route to host" in err.message or "unreachable" in err.message
    assert took < 0.5, "the UDP route check must answer without waiting for the timeout"


def test_address_nobody_answers_is_bounded_by_the_timeout(nfs_host):
    err, took = _unreachable(lambda: check_reachable(nfs_host.silent_ip, timeout=1.0))
    assert took < 1.6
    assert nfs_host.silent_ip in err.message


def test_hung_server_that_accepts_but_never_answers(nfs_host, servers):
    servers("hang")
    err, took = _unreachable(lambda: check_reachable(nfs_host.peer_ip, timeout=1.0))
    assert "did not answer an RPC NULL call" in err.message
    assert 0.8 < took < 1.6


def test_hung_server_passes_a_tcp_only_check(nfs_host, servers):
    servers("hang")
    start = time.monotonic()
    assert check_reachable(nfs_host.peer_ip, timeout=1.0, rpc_probe=False) == nfs_host.peer_ip
    assert time.monotonic() - start < 0.5


def test_other_port(nfs_host, servers):
    servers("rpc", port=12049)
    assert check_reachable(nfs_host.peer_ip, port=12049, timeout=2.0) == nfs_host.peer_ip
    err, _ = _unreachable(lambda: check_reachable(nfs_host.peer_ip, port=2049, timeout=2.0))
    assert "connection refused" in err.message


def test_unresolvable_name():
    err, took = _unreachable(lambda: check_reachable("vmr-no-such-host.invalid", timeout=2.0))
    assert "vmr-no-such-host.invalid" in err.message
    assert took < 2.6
