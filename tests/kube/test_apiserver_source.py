"""The API-server source and its reflectors, against the fake API server (tests/fake_apiserver).

The fake is at the outermost edge (a real HTTP server on 127.0.0.1); lightkube and our
reflectors run for real. What is proven: pods bound to this node (only) arrive, with their
claims and only the Secrets/ConfigMaps they reference; deletion, a terminal phase and a passed
deletionTimestamp remove a pod; a dropped watch, a 410 relist, a stopped server and bad
credentials keep the last objects and mark the source stale since T; the next list reconciles.
"""

from __future__ import annotations

import base64
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Iterator

import pytest

from tests.daemon_harness import wait_until
from tests.fake_apiserver.conftest import fake_apiserver, kubeconfig  # noqa: F401 - pytest fixtures
from volumemanager.kube.config import ApiServerConfig, make_client
from volumemanager.sources.apiserver import ApiServerSource
from volumemanager.sources.base import origin_kind
from volumemanager.sources.combined import CombinedSource

NODE = "node-a"


def api_pod(name: str, node: str = NODE, ns: str = "default", volumes: list | None = None, **meta) -> dict:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, **meta},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}],
                     "volumes": volumes if volumes is not None else [{"name": "scratch", "emptyDir": {}}]},
            "status": {"phase": "Running"}}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Recorder:
    """The on_change callback: counts calls and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.calls = 0
        self.cond = threading.Condition()

    def __call__(self) -> None:
        with self.cond:
            self.calls += 1
            self.cond.notify_all()


@pytest.fixture
def source(fake_apiserver, kubeconfig) -> Iterator[tuple[ApiServerSource, Recorder]]:  # noqa: F811
    client = make_client(ApiServerConfig(kubeconfig=str(kubeconfig)), timeout=5.0)
    src = ApiServerSource(client, NODE)
    rec = Recorder()
    src.start(rec)
    try:
        yield src, rec
    finally:
        src.stop()
        client.close()


def pod_names(src: ApiServerSource) -> set[str]:
    return {p.key for p in src.snapshot().pods.values()}


def test_pods_of_this_node_arrive_and_others_do_not(fake_apiserver, source):  # noqa: F811
    src, rec = source
    fake_apiserver.upsert(api_pod("mine"))
    fake_apiserver.upsert(api_pod("theirs", node="node-b"))
    wait_until(lambda: src.health().ok, timeout=10)
    wait_until(lambda: pod_names(src) == {"default/mine"}, timeout=10)
    pod = next(iter(src.snapshot().pods.values()))
    assert origin_kind(pod.origin) == "api"
    assert pod.uid == fake_apiserver.get("Pod", "default", "mine")["metadata"]["uid"]
    # The server selected them: the pods watch asks for this node only.
    assert fake_apiserver.requests_matching("GET", "/pods", fieldSelector=f"spec.nodeName={NODE}")
    # Event-driven: a new pod reaches the snapshot without a relist.
    lists_before = len(fake_apiserver.requests_matching("GET", "/pods", watch=None))
    t0 = time.monotonic()
    fake_apiserver.upsert(api_pod("second"))
    wait_until(lambda: "default/second" in pod_names(src), timeout=10)
    print(f"API change -> snapshot in {(time.monotonic() - t0) * 1000:.1f} ms")
    assert len(fake_apiserver.requests_matching("GET", "/pods", watch=None)) == lists_before
    states = {s.kind: s for s in src.watch_states()}
    assert set(states) >= {"pods", "persistentvolumes", "persistentvolumeclaims", "storageclasses",
                           "csidrivers", "volumeattachments"}
    assert all(s.synced and s.error is None for s in states.values())
    assert states["pods"].resource_version is not None


def test_deletion_terminal_phase_and_passed_deletion_timestamp_remove_a_pod(fake_apiserver, source):  # noqa: F811
    src, _ = source
    for name in ("deleted", "finished", "failed", "expired", "expiring", "graceful"):
        fake_apiserver.upsert(api_pod(name))
    wait_until(lambda: len(pod_names(src)) == 6, timeout=10)
    fake_apiserver.delete("Pod", "default", "deleted")
    for name, phase in (("finished", "Succeeded"), ("failed", "Failed")):
        p = api_pod(name)
        p["status"]["phase"] = phase
        fake_apiserver.upsert(p)
    fake_apiserver.upsert(api_pod("expired", deletionTimestamp=iso(time.time() - 5), deletionGracePeriodSeconds=30))
    fake_apiserver.upsert(api_pod("expiring", deletionTimestamp=iso(time.time() + 2), deletionGracePeriodSeconds=2))
    fake_apiserver.upsert(api_pod("graceful", deletionTimestamp=iso(time.time() + 3600),
                                  deletionGracePeriodSeconds=3600))
    wait_until(lambda: pod_names(src) == {"default/expiring", "default/graceful"}, timeout=10)
    # No event comes when a deletionTimestamp passes: the source's timer wakes it.
    wait_until(lambda: pod_names(src) == {"default/graceful"}, timeout=10)


def test_claims_resolve_from_the_api_and_only_referenced_secrets_are_watched(fake_apiserver, source):  # noqa: F811
    src, _ = source
    secret = {"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "used", "namespace": "default"},
              "data": {"k": base64.b64encode(b"v").decode()}}
    fake_apiserver.upsert(secret)
    fake_apiserver.upsert({**secret, "metadata": {"name": "unused", "namespace": "default"}})
    fake_apiserver.upsert({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "cm", "namespace": "default"},
                           "data": {"a": "b"}})
    fake_apiserver.upsert({"kind": "PersistentVolume", "apiVersion": "v1", "metadata": {"name": "pv1"},
                           "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                                    "hostPath": {"path": "/tmp/pv1"}}})
    fake_apiserver.upsert({"kind": "PersistentVolumeClaim", "apiVersion": "v1",
                           "metadata": {"name": "c1", "namespace": "default"},
                           "spec": {"accessModes": ["ReadWriteOnce"], "volumeName": "pv1",
                                    "resources": {"requests": {"storage": "1Gi"}}}})
    fake_apiserver.upsert(api_pod("p", volumes=[
        {"name": "s", "secret": {"secretName": "used"}},
        {"name": "c", "configMap": {"name": "cm"}},
        {"name": "d", "persistentVolumeClaim": {"claimName": "c1"}},
    ]))
    wait_until(lambda: ("default", "used") in (snap := src.snapshot()).secrets and ("default", "cm") in snap.configmaps
               and ("default", "c1") in snap.pvcs and "pv1" in snap.pvs, timeout=10)
    snap = src.snapshot()
    assert ("default", "unused") not in snap.secrets
    assert snap.pvcs[("default", "c1")].volume_name == "pv1" and "pv1" in snap.pvs
    assert snap.secrets[("default", "used")].data == {"k": b"v"}
    assert fake_apiserver.requests_matching("GET", "/namespaces/default/secrets", fieldSelector="metadata.name=used")
    assert not fake_apiserver.requests_matching("GET", "/secrets", fieldSelector="metadata.name=unused")
    # A changed secret reaches the snapshot through its own watch.
    fake_apiserver.upsert({**secret, "data": {"k": base64.b64encode(b"w").decode()}})
    wait_until(lambda: src.snapshot().secrets[("default", "used")].data == {"k": b"w"}, timeout=10)
    # The pod is gone: nothing needs the secret, its watch stops and it leaves the snapshot.
    fake_apiserver.delete("Pod", "default", "p")
    wait_until(lambda: not src.snapshot().secrets and not src.snapshot().configmaps, timeout=10)
    assert {s.kind for s in src.watch_states()} == {"pods", "persistentvolumes", "persistentvolumeclaims",
                                                     "storageclasses", "csidrivers", "volumeattachments"}


def test_an_invalid_api_object_is_reported_by_name_and_keeps_its_last_good_version(fake_apiserver, source):  # noqa: F811
    src, _ = source
    fake_apiserver.upsert(api_pod("p"))
    wait_until(lambda: pod_names(src) == {"default/p"}, timeout=10)
    fake_apiserver.upsert(api_pod("p", volumes=[{"name": "h", "hostPath": {"path": "relative/path"}}]))
    wait_until(lambda: bool(src.snapshot().errors), timeout=10)
    err = src.snapshot().errors[0]
    assert "Pod default/p" in err.file and err.field == "spec.volumes[0].hostPath.path"
    assert pod_names(src) == {"default/p"}
    assert src.snapshot().pod_by_key("default/p").volumes[0].name == "scratch"


def test_a_dropped_watch_and_a_410_keep_everything_and_say_stale_until_relisted(fake_apiserver, source):  # noqa: F811
    src, _ = source
    fake_apiserver.upsert(api_pod("a"))
    wait_until(lambda: src.health().ok and pod_names(src) == {"default/a"}, timeout=10)
    pods_lists = len(fake_apiserver.requests_matching("GET", "/pods", limit="500"))
    # Dropped: reconnect from the last resourceVersion (no relist), the pod stays.
    fake_apiserver.drop_watches()
    wait_until(lambda: fake_apiserver.open_watches() >= 6 and src.health().ok, timeout=15)
    assert pod_names(src) == {"default/a"}
    # Compacted while a pod is deleted, then the watch expires: 410 -> relist, which removes it.
    fake_apiserver.set_delay(0.5)
    fake_apiserver.delete("Pod", "default", "a")
    fake_apiserver.compact()
    fake_apiserver.expire_watches()
    wait_until(lambda: not src.health().ok, timeout=10)
    assert src.health().failed_since is not None
    fake_apiserver.set_delay(0)
    wait_until(lambda: src.health().ok and pod_names(src) == set(), timeout=15)
    assert len(fake_apiserver.requests_matching("GET", "/pods", limit="500")) > pods_lists


def test_an_unreachable_server_and_bad_credentials_keep_the_last_objects(fake_apiserver, source):  # noqa: F811
    src, _ = source
    fake_apiserver.upsert(api_pod("a"))
    wait_until(lambda: src.health().ok and pod_names(src) == {"default/a"}, timeout=10)
    fake_apiserver.stop()
    wait_until(lambda: src.health().failed_since is not None, timeout=10)
    since = src.health().failed_since
    assert pod_names(src) == {"default/a"}
    assert "failed since" in src.health().describe() and "stale" in src.health().describe()
    fake_apiserver.start()
    fake_apiserver.set_auth_failure(401)
    time.sleep(1.0)
    assert src.health().failed_since == since  # still failing since the first failure
    assert "401" in (src.health().error or "") or "Connect" in (src.health().error or "")
    assert pod_names(src) == {"default/a"}
    fake_apiserver.set_auth_failure(None)
    wait_until(lambda: src.health().ok, timeout=40)
    assert pod_names(src) == {"default/a"}


def test_bad_credentials_at_start_never_sync(fake_apiserver, tmp_path):  # noqa: F811
    kc = fake_apiserver.write_kubeconfig(tmp_path / "kc", token="wrong")
    client = make_client(ApiServerConfig(kubeconfig=str(kc)), timeout=5.0)
    src = ApiServerSource(client, NODE)
    fake_apiserver.upsert(api_pod("a"))
    src.start(Recorder())
    try:
        wait_until(lambda: src.health().failed_since is not None, timeout=10)
        h = src.health()
        assert not h.synced and not h.ok and "401" in (h.error or "")
        assert src.snapshot().pods == {}
        assert "nothing is torn down" in h.describe()
    finally:
        src.stop()
        client.close()


def test_combined_source_keeps_each_source_and_its_health(fake_apiserver, source, tmp_path):  # noqa: F811
    from volumemanager.sources.manifest_dir import ManifestDirSource

    src, _ = source
    mdir = tmp_path / "manifests"
    mdir.mkdir()
    (mdir / "p.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: static, namespace: default}\n"
        "spec:\n  volumes: [{name: v, emptyDir: {}}]\n")
    manifests = ManifestDirSource(str(mdir))
    combined = CombinedSource([manifests, src])
    rec = Recorder()
    manifests.start(rec)
    try:
        fake_apiserver.upsert(api_pod("dynamic"))
        wait_until(lambda: {p.key for p in combined.snapshot().pods.values()} == {"default/static", "default/dynamic"},
                   timeout=10)
        kinds = {p.key: origin_kind(p.origin) for p in combined.snapshot().pods.values()}
        assert kinds == {"default/static": "manifests", "default/dynamic": "api"}
        assert [h.name for h in combined.healths()] == [manifests.name, src.name]
        assert combined.health().ok
        gen = combined.snapshot().generation
        fake_apiserver.upsert(api_pod("dynamic2"))
        wait_until(lambda: combined.snapshot().generation > gen, timeout=10)
        fake_apiserver.stop()
        wait_until(lambda: not combined.health().ok, timeout=10)
        assert [h.ok for h in combined.healths()] == [True, False]
    finally:
        manifests.stop()


def test_resync_relists_every_kind_without_a_failure_and_stop_is_prompt(fake_apiserver, source):  # noqa: F811
    src, _ = source
    fake_apiserver.upsert(api_pod("a"))
    wait_until(lambda: src.health().ok and pod_names(src) == {"default/a"}, timeout=10)
    lists = {s.kind: s.lists for s in src.watch_states()}
    src.resync()
    wait_until(lambda: all(s.lists > lists[s.kind] for s in src.watch_states()), timeout=10)
    assert src.health().ok and src.health().failed_since is None
    t0 = time.monotonic()
    src.stop()
    assert time.monotonic() - t0 < 1.0, "stop must not wait for open watches to time out"
    assert not [t for t in threading.enumerate() if t.name.startswith("reflector-") and t.is_alive()]


def test_bookmarks_advance_the_resource_version_and_volume_attachments_are_this_nodes(fake_apiserver, source):  # noqa: F811
    src, _ = source
    wait_until(lambda: src.health().ok, timeout=10)
    # Changes the watches do not see (another kind) move the server's version on; a bookmark
    # brings each idle watch up to it, so a reconnect does not start from an old version.
    for i in range(3):
        fake_apiserver.upsert({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": f"ns{i}"}})
    rv = str(fake_apiserver.resource_version)
    assert any(s.resource_version != rv for s in src.watch_states())
    fake_apiserver.send_bookmarks()
    wait_until(lambda: all(s.resource_version == rv for s in src.watch_states()), timeout=10)
    assert fake_apiserver.requests_matching("GET", "/pods", allowWatchBookmarks="true")

    def va(name: str, node: str) -> dict:
        return {"kind": "VolumeAttachment", "apiVersion": "storage.k8s.io/v1", "metadata": {"name": name},
                "spec": {"attacher": "csi.example.com", "nodeName": node, "source": {"persistentVolumeName": "pv"}}}

    fake_apiserver.upsert(va("here", NODE))
    fake_apiserver.upsert(va("there", "node-b"))
    wait_until(lambda: "here" in src.volume_attachments(), timeout=10)
    assert "there" not in src.volume_attachments()


def test_retries_back_off_exponentially(fake_apiserver, source):  # noqa: F811
    src, _ = source
    wait_until(lambda: src.health().ok, timeout=10)
    fake_apiserver.set_auth_failure(403)
    fake_apiserver.drop_watches()
    wait_until(lambda: "403" in (src.health().error or ""), timeout=10)
    before = len(fake_apiserver.requests)
    time.sleep(3.0)
    tries = len(fake_apiserver.requests) - before
    # 6 kinds; without growing delays (0.1-0.2 s each) that would be ~120 requests in 3 s.
    assert tries < 60, f"{tries} requests in 3 s while refused: the backoff does not grow"
    fake_apiserver.set_auth_failure(None)
    wait_until(lambda: src.health().ok, timeout=40)


def test_referenced_objects_kept_per_pod_object_give_the_same_answer():
    """Issue 16: the per-pod memo of referenced Secrets/ConfigMaps answers as a fresh walk, a
    changed pod (a new object) is walked again, and a claim's PV is looked up every time (it
    may change without the pod)."""
    from volumemanager.manifests.loader import load_bytes
    from volumemanager.sources.apiserver import _referenced_objects

    def pod(name: str, secret: str) -> str:
        return (f"kind: Pod\nmetadata: {{name: {name}, namespace: ns, uid: u-{name}}}\nspec:\n  volumes:\n"
                f"  - {{name: s, secret: {{secretName: {secret}}}}}\n"
                f"  - {{name: c, configMap: {{name: cm-{name}}}}}\n"
                f"  - {{name: d, persistentVolumeClaim: {{claimName: data}}}}\n")

    def objs(text: str):
        return load_bytes(text.encode(), "t.yaml").objects

    a, b = objs(pod("a", "s1"))[0], objs(pod("b", "s2"))[0]
    (claim,) = objs("kind: PersistentVolumeClaim\nmetadata: {name: data, namespace: ns}\nspec: {volumeName: pv1}\n")
    (pv,) = objs("kind: PersistentVolume\nmetadata: {name: pv1}\nspec:\n  csi: {driver: d, volumeHandle: h,"
                 " nodePublishSecretRef: {name: pvsecret, namespace: ns}}\n")
    pvcs, pvs = {("ns", "data"): claim}, {"pv1": pv}
    memo: dict = {}
    first = _referenced_objects([a, b], pvcs, pvs, memo)
    assert first == _referenced_objects([a, b], pvcs, pvs)
    assert {("secret", "ns", "s1"), ("secret", "ns", "s2"), ("configmap", "ns", "cm-a"),
            ("secret", "ns", "pvsecret")} <= first
    b2 = objs(pod("b", "s3"))[0]  # b changed: a new object
    assert _referenced_objects([a, b2], pvcs, pvs, memo) == _referenced_objects([a, b2], pvcs, pvs)
    assert ("secret", "ns", "s2") not in _referenced_objects([a, b2], pvcs, pvs, memo)
    assert ("secret", "ns", "pvsecret") not in _referenced_objects([a, b2], pvcs, {}, memo)  # the PV went
