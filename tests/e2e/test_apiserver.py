"""Issue 15, end to end: the real daemon with --kubeconfig against the fake API server.

The fake (tests/fake_apiserver) is a real HTTP server in this process; the daemon is a real
subprocess with real tmpfs and bind mounts. Pods bound to the daemon's node mount, others do
not; deletion, a terminal phase and a passed deletionTimestamp tear down; a dropped watch, a
410 relist, a stopped server and bad credentials tear nothing down and status says stale
since T; the manifest dir works beside the API server.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import datetime, timezone

import pytest

from tests.daemon_harness import wait_until
from tests.fake_apiserver.conftest import fake_apiserver, kubeconfig  # noqa: F401 - pytest fixtures
from tests.fixtures_mounts import require_root

pytestmark = [pytest.mark.timeout(120)]

NODE = "testnode"  # the harness's --node-name


@pytest.fixture(autouse=True)
def _root():
    require_root()


def api_pod(name: str, host: str, node: str = NODE, **meta) -> dict:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "demo", **meta},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}],
                     "volumes": [{"name": "cache", "emptyDir": {"medium": "Memory"}},
                                 {"name": "data", "hostPath": {"path": host, "type": "DirectoryOrCreate"}}]},
            "status": {"phase": "Running"}}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_mounts(daemon, pod: str) -> dict[str, str]:
    return {v["volume"]: v["state"] for v in daemon.status()["volumes"] if v["pod"] == pod}


def mounted(daemon, pod: str) -> bool:
    states = pod_mounts(daemon, pod)
    return bool(states) and all(s == "mounted" for s in states.values())


def gone(daemon, pod: str) -> bool:
    return not pod_mounts(daemon, pod)


def api_source(status: dict) -> dict:
    return next(s for s in status["sources"] if s["kind"] == "api")


def test_api_pods_of_this_node_mount_and_go_away(daemon_factory, fake_apiserver, kubeconfig, tmp_path):  # noqa: F811
    host = str(tmp_path / "host")
    fake_apiserver.upsert(api_pod("mine", host))
    fake_apiserver.upsert(api_pod("theirs", host, node="other-node"))
    d = daemon_factory(["--kubeconfig", str(kubeconfig)])
    assert d.cli("wait", "demo/mine", "--timeout", "30").returncode == 0
    st = d.status()
    assert st["api_server"] == fake_apiserver.url
    rows = [v for v in st["volumes"] if v["pod"] == "demo/mine"]
    assert {v["source"] for v in rows} == {"api"}
    assert rows[0]["pod_uid"] == fake_apiserver.get("Pod", "demo", "mine")["metadata"]["uid"]
    assert gone(d, "demo/theirs")
    src = api_source(st)
    assert src["state"] == "synced" and src["server"] == fake_apiserver.url
    assert {w["kind"] for w in src["watches"]} >= {"pods", "persistentvolumes", "persistentvolumeclaims"}
    assert all(w["synced"] and w["error"] is None for w in src["watches"])
    explain = d.cli("explain", "demo/mine")
    assert "mounted" in explain.stdout

    # An API change reaches a mount through the watch (measured, not asserted tightly).
    t0 = time.monotonic()
    fake_apiserver.upsert(api_pod("fast", host))
    wait_until(lambda: mounted(d, "demo/fast"), timeout=30, interval=0.005, what="demo/fast mounted")
    print(f"API pod created -> volumes mounted (seen by status) in {(time.monotonic() - t0) * 1000:.0f} ms")

    # Deleted, terminal, past its deletionTimestamp: torn down.
    for name in ("finished", "expired"):
        fake_apiserver.upsert(api_pod(name, host))
    wait_until(lambda: mounted(d, "demo/finished") and mounted(d, "demo/expired"), timeout=30)
    fake_apiserver.delete("Pod", "demo", "fast")
    done = api_pod("finished", host)
    done["status"]["phase"] = "Succeeded"
    fake_apiserver.upsert(done)
    fake_apiserver.upsert(api_pod("expired", host, deletionTimestamp=iso(time.time() + 1),
                                  deletionGracePeriodSeconds=1))
    wait_until(lambda: all(gone(d, p) for p in ("demo/fast", "demo/finished", "demo/expired")), timeout=30,
               what="deleted, finished and expired pods torn down")
    assert mounted(d, "demo/mine")
    assert os.path.isdir(host)  # hostPath data is never removed


def test_api_trouble_tears_nothing_down_and_says_stale(daemon_factory, fake_apiserver, kubeconfig, tmp_path):  # noqa: F811
    host = str(tmp_path / "host")
    fake_apiserver.upsert(api_pod("a", host))
    fake_apiserver.upsert(api_pod("b", host))
    d = daemon_factory(["--kubeconfig", str(kubeconfig)])
    assert d.cli("wait", "demo/a", "--timeout", "30").returncode == 0
    assert d.cli("wait", "demo/b", "--timeout", "30").returncode == 0
    before = sorted(m.mount_point for m in d.mounts())

    # A dropped watch: reconnects from its resourceVersion, nothing changes.
    fake_apiserver.drop_watches()
    time.sleep(1.0)
    assert sorted(m.mount_point for m in d.mounts()) == before

    # The server goes away: stale since T, mounts stay.
    fake_apiserver.stop()
    st = wait_until(lambda: (s := d.status()) and api_source(s)["state"] == "failed" and s, timeout=20,
                    what="the API source to be failed")
    assert api_source(st)["since"] is not None
    explain = d.cli("explain", "demo/a", check=False).stdout
    assert "failed since" in explain and "stale" in explain
    time.sleep(1.0)
    assert sorted(m.mount_point for m in d.mounts()) == before

    # Back, but 401: still stale, still mounted.
    fake_apiserver.start()
    fake_apiserver.set_auth_failure(401)
    wait_until(lambda: "401" in (api_source(d.status())["error"] or ""), timeout=40, what="a 401 in status")
    assert sorted(m.mount_point for m in d.mounts()) == before

    # Healed while b was deleted and the history compacted: the relist (410) removes b only.
    fake_apiserver.set_auth_failure(None)
    wait_until(lambda: api_source(d.status())["state"] == "synced", timeout=40)
    fake_apiserver.set_delay(0.3)
    fake_apiserver.delete("Pod", "demo", "b")
    fake_apiserver.compact()
    fake_apiserver.expire_watches()
    fake_apiserver.set_delay(0)
    wait_until(lambda: gone(d, "demo/b"), timeout=40, what="demo/b torn down after the relist")
    assert mounted(d, "demo/a")


def test_bad_credentials_at_start_tear_nothing_down(daemon_factory, fake_apiserver, kubeconfig, tmp_path):  # noqa: F811
    host = str(tmp_path / "host")
    fake_apiserver.upsert(api_pod("a", host))
    d = daemon_factory(["--kubeconfig", str(kubeconfig)])
    assert d.cli("wait", "demo/a", "--timeout", "30").returncode == 0
    before = sorted(m.mount_point for m in d.mounts())
    d.stop()
    bad = fake_apiserver.write_kubeconfig(tmp_path / "bad-kubeconfig", token="wrong")
    d2 = daemon_factory(["--kubeconfig", str(bad)])
    st = wait_until(lambda: (s := d2.status()) and "401" in (api_source(s)["error"] or "") and s, timeout=20,
                    what="the 401 in status")
    assert api_source(st)["state"] == "failed"
    time.sleep(2.0)  # several reconciler passes
    assert sorted(m.mount_point for m in d2.mounts()) == before


def test_manifest_dir_and_api_server_at_once(daemon_factory, fake_apiserver, kubeconfig, tmp_path):  # noqa: F811
    host = str(tmp_path / "host")
    fake_apiserver.upsert(api_pod("dynamic", host))
    d = daemon_factory(["--kubeconfig", str(kubeconfig)], start=False)
    d.write_manifest("static.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: static, namespace: demo}\n"
                                    "spec:\n  volumes: [{name: scratch, emptyDir: {}}]\n")
    d.start()
    assert d.cli("wait", "demo/dynamic", "--timeout", "30").returncode == 0
    assert d.cli("wait", "demo/static", "--timeout", "30").returncode == 0
    sources = {v["pod"]: v["source"] for v in d.status()["volumes"]}
    assert sources == {"demo/dynamic": "api", "demo/static": "manifests"}
    assert sorted(s["kind"] for s in d.status()["sources"]) == ["api", "manifests"]
    # Removing the manifest tears down the static pod only.
    os.unlink(d.manifests / "static.yaml")
    wait_until(lambda: gone(d, "demo/static"), timeout=30)
    assert mounted(d, "demo/dynamic")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def real_apiserver(tmp_path):
    """etcd + kube-apiserver from PATH on free local ports, a static bearer token, AlwaysAllow;
    both stopped by PID afterwards. Skipped (with the reason) when either is missing."""
    import subprocess

    apiserver, etcd = shutil.which("kube-apiserver"), shutil.which("etcd")
    if apiserver is None or etcd is None:
        missing = " and ".join(n for n, p in (("kube-apiserver", apiserver), ("etcd", etcd)) if p is None)
        pytest.skip(f"no {missing} on PATH: the real API server test needs both (the fake API server "
                    "covers the protocol in the other tests)")
    import urllib.request
    import ssl
    import json as _json

    work = tmp_path / "k8s"
    work.mkdir()
    subprocess.run(["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
                   check=True, capture_output=True)
    token = "real-apiserver-test-token"
    (work / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    etcd_port, peer_port, api_port = _free_port(), _free_port(), _free_port()
    procs = []
    log = open(work / "k8s.log", "ab")
    try:
        procs.append(subprocess.Popen(
            [etcd, "--data-dir", str(work / "etcd"), "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}"], stdout=log, stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [apiserver, f"--etcd-servers=http://127.0.0.1:{etcd_port}", f"--secure-port={api_port}",
             "--bind-address=127.0.0.1", f"--cert-dir={work / 'certs'}", f"--token-auth-file={work / 'tokens.csv'}",
             "--authorization-mode=AlwaysAllow", f"--service-account-key-file={work / 'sa.pub'}",
             f"--service-account-signing-key-file={work / 'sa.key'}",
             "--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.96.0.0/24"],
            stdout=log, stderr=subprocess.STDOUT))
        url = f"https://127.0.0.1:{api_port}"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def ready() -> bool:
            req = urllib.request.Request(f"{url}/readyz", headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(ready, timeout=60, interval=0.5, what="kube-apiserver /readyz")
        kc = work / "kubeconfig"
        kc.write_text(_json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "real",
            "clusters": [{"name": "real", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [{"name": "real", "context": {"cluster": "real", "user": "admin"}}]}))
        yield kc
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def test_against_a_real_kube_apiserver(daemon_factory, real_apiserver, tmp_path):
    """The same life of a pod as above, with a real kube-apiserver (and etcd) instead of the fake."""
    from lightkube.resources.core_v1 import Namespace, Pod

    from volumemanager.kube.config import ApiServerConfig, make_client

    client = make_client(ApiServerConfig(kubeconfig=str(real_apiserver)))
    client.create(Namespace.from_dict({"metadata": {"name": "demo"}}))  # type: ignore[attr-defined]
    host = str(tmp_path / "host")
    client.create(Pod.from_dict(api_pod("mine", host)))  # type: ignore[attr-defined]
    client.create(Pod.from_dict(api_pod("theirs", host, node="other-node")))  # type: ignore[attr-defined]
    d = daemon_factory(["--kubeconfig", str(real_apiserver)])
    assert d.cli("wait", "demo/mine", "--timeout", "60").returncode == 0
    assert gone(d, "demo/theirs")
    assert all(w["synced"] for w in api_source(d.status())["watches"])
    client.delete(Pod, "mine", namespace="demo", grace_period=0)
    wait_until(lambda: gone(d, "demo/mine"), timeout=60, what="demo/mine torn down after its deletion")
