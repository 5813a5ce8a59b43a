"""The fake API server, driven through the real client library (lightkube).

Why: the API-server source will be tested against this fake; these tests prove the fake is
faithful enough for lightkube on every path the source needs (list/watch with
resourceVersions, bookmarks, 410 Gone, dropped connections, slow answers, 401/403, node
status patches, Events, CSINodes, TokenRequests). No client method is mocked.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import httpx2
import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.core.generic_client import GenericSyncClient
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.storage_v1 import CSINodeDriver, CSINodeSpec
from lightkube.resources.core_v1 import Event, Node, Pod, ServiceAccount
from lightkube.resources.storage_v1 import CSINode
from lightkube.types import PatchType

from tests.fake_apiserver import FakeApiServer

NODE = "node-a"


def pod(name: str, node: str = NODE, ns: str = "default", labels: dict | None = None) -> dict:
    return {"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}}


@pytest.fixture
def client(kubeconfig: Path) -> Iterator[Client]:
    c = Client(KubeConfig.from_file(str(kubeconfig)), trust_env=False, timeout=httpx2.Timeout(5.0))
    try:
        yield c
    finally:
        c.close()


def list_rv(client: Client) -> str:
    """List all pods (consuming the pages) and return the list's resourceVersion."""
    it = client.list(Pod, namespace="*")
    list(it)
    return it.resourceVersion


def watch(client: Client, res: Any, **params: Any) -> Iterator[tuple[str, Any]]:
    """A watch with parameters lightkube's ``Client.watch`` has no argument for (allowWatchBookmarks).

    lightkube's generic client builds and streams the request; only the query is ours.
    Errors are raised (never retried here), so tests see each one.
    """
    gc: GenericSyncClient = client._client
    query = {k: v for k, v in params.items() if v is not None}
    br = gc.prepare_request("list", res=res, namespace="*" if res is Pod else None, watch=True, params=query)
    return gc.watch(br)


class Collector:
    """Consumes a watch in a thread, so tests can act on the server meanwhile."""

    def __init__(self, it: Iterator[tuple[str, Any]]) -> None:
        self.events: list[tuple[str, Any]] = []
        self.error: BaseException | None = None
        self._it = it
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        try:
            for ev in self._it:
                self.events.append(ev)
        except BaseException as e:  # noqa: BLE001 - the test asserts on it
            self.error = e

    def wait(self, pred: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out; events={self.summary()} error={self.error!r}"
            time.sleep(0.02)

    def summary(self) -> list[tuple[str, str | None]]:
        return [(t, o.metadata.name) for t, o in self.events]

    def join(self, timeout: float = 5.0) -> None:
        self._t.join(timeout)
        assert not self._t.is_alive(), "watch did not end"

    def end(self, server: FakeApiServer, timeout: float = 5.0) -> None:
        """Stop a watch that lightkube would go on re-opening: cut it until the client gives up."""
        deadline = time.monotonic() + timeout
        while self._t.is_alive():
            assert time.monotonic() < deadline, "watch did not end"
            server.drop_watches()
            self._t.join(0.1)


def test_list_then_watch_from_its_resource_version(fake_apiserver: FakeApiServer, client: Client) -> None:
    fake_apiserver.upsert(pod("p1"))
    fake_apiserver.upsert(pod("other", node="node-b"))
    lst = client.list(Pod, namespace="*", fields={"spec.nodeName": NODE})
    assert [p.metadata.name for p in lst] == ["p1"]
    rv = lst.resourceVersion
    assert int(rv) == fake_apiserver.resource_version

    w = Collector(watch(client, Pod, resourceVersion=rv, fieldSelector=f"spec.nodeName={NODE}", timeoutSeconds=1))
    fake_apiserver.upsert(pod("p2"))
    fake_apiserver.upsert(pod("p2", labels={"x": "y"}))
    fake_apiserver.upsert(pod("p2", node="node-b"))  # leaves the selector: a DELETED, as the real server sends
    fake_apiserver.upsert(pod("b2", node="node-b"))  # never matched: nothing
    fake_apiserver.delete("pods", "default", "p1")
    w.wait(lambda: len(w.events) >= 4)
    assert w.summary() == [("ADDED", "p2"), ("MODIFIED", "p2"), ("DELETED", "p2"), ("DELETED", "p1")]
    rvs = [int(o.metadata.resourceVersion) for _, o in w.events]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)
    # timeoutSeconds=1 ends the stream cleanly; lightkube re-opens it from the last event's RV.
    wait_until(lambda: len(fake_apiserver.requests_matching("GET", "/api/v1/pods", watch="true")) >= 2)
    first, second = fake_apiserver.requests_matching("GET", "/api/v1/pods", watch="true")[:2]
    assert first.query["resourceVersion"] == rv and first.query["fieldSelector"] == f"spec.nodeName={NODE}"
    assert second.query["resourceVersion"] == w.events[-1][1].metadata.resourceVersion
    assert w.error is None
    w.end(fake_apiserver)


def test_watch_without_resource_version_starts_with_synthetic_adds(fake_apiserver: FakeApiServer, client: Client) -> None:
    fake_apiserver.upsert(pod("p1"))
    w = Collector(watch(client, Pod, fieldSelector=f"spec.nodeName={NODE}", timeoutSeconds=1))
    w.wait(lambda: w.events)
    wait_until(lambda: len(fake_apiserver.requests_matching("GET", "/api/v1/pods", watch="true")) >= 2)
    w.end(fake_apiserver)
    assert w.summary() == [("ADDED", "p1")]


def test_selectors_metadata_name_and_labels(fake_apiserver: FakeApiServer, client: Client) -> None:
    fake_apiserver.upsert({"kind": "Secret", "metadata": {"name": "s1", "namespace": "ns1"}, "data": {"k": "dg=="}})
    fake_apiserver.upsert({"kind": "Secret", "metadata": {"name": "s2", "namespace": "ns1"}})
    from lightkube.resources.core_v1 import Secret
    got = list(client.list(Secret, namespace="ns1", fields={"metadata.name": "s1"}))
    assert [s.metadata.name for s in got] == ["s1"] and got[0].data == {"k": "dg=="}
    fake_apiserver.upsert(pod("a", labels={"app": "x", "tier": "db"}))
    fake_apiserver.upsert(pod("b", labels={"app": "y"}))
    assert [p.metadata.name for p in client.list(Pod, namespace="*", labels={"app": "x"})] == ["a"]
    assert [p.metadata.name for p in client.list(Pod, namespace="*", labels={"app": ("x", "y")})] == ["a", "b"]


def test_pagination_and_expired_continue(fake_apiserver: FakeApiServer, client: Client) -> None:
    for i in range(5):
        fake_apiserver.upsert(pod(f"p{i}"))
    assert [p.metadata.name for p in client.list(Pod, namespace="*", chunk_size=2)] == [f"p{i}" for i in range(5)]
    assert len(fake_apiserver.requests_matching("GET", "/api/v1/pods", limit="2")) == 3
    it = iter(client.list(Pod, namespace="*", chunk_size=2))
    next(it)
    next(it)
    fake_apiserver.upsert(pod("p9"))
    fake_apiserver.compact()
    with pytest.raises(ApiError) as e:
        next(it)
    assert e.value.status.code == 410 and e.value.status.reason == "Expired"


def test_bookmarks_carry_the_current_resource_version(fake_apiserver: FakeApiServer, client: Client) -> None:
    fake_apiserver.upsert(pod("p1"))
    rv = list_rv(client)
    w = Collector(watch(client, Pod, resourceVersion=rv, allowWatchBookmarks="true",
                        fieldSelector=f"spec.nodeName={NODE}", timeoutSeconds=5))
    wait_for_watches(fake_apiserver, 1)
    fake_apiserver.upsert(pod("elsewhere", node="node-b"))  # moves the RV without an event for us
    fake_apiserver.send_bookmarks()
    w.wait(lambda: any(t == "BOOKMARK" for t, _ in w.events))
    kind, obj = w.events[-1]
    assert kind == "BOOKMARK" and obj.metadata.resourceVersion == str(fake_apiserver.resource_version)
    w.end(fake_apiserver)


def test_no_bookmarks_unless_asked(fake_apiserver: FakeApiServer, client: Client) -> None:
    rv = list_rv(client)
    w = Collector(watch(client, Pod, resourceVersion=rv, timeoutSeconds=1))
    wait_for_watches(fake_apiserver, 1)
    fake_apiserver.send_bookmarks()
    time.sleep(0.3)
    w.end(fake_apiserver)
    assert w.events == []


def test_periodic_bookmarks(kubeconfig: Path, fake_apiserver: FakeApiServer, client: Client) -> None:
    fake_apiserver.bookmark_interval = 0.2
    rv = list_rv(client)
    w = Collector(watch(client, Pod, resourceVersion=rv, allowWatchBookmarks="true", timeoutSeconds=30))
    time.sleep(1.0)
    w.end(fake_apiserver)
    assert 2 <= sum(t == "BOOKMARK" for t, _ in w.events) <= 6


def wait_until(pred: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def wait_for_watches(server: FakeApiServer, n: int) -> None:
    deadline = time.monotonic() + 5
    while server.open_watches() < n:
        assert time.monotonic() < deadline, "watch never arrived"
        time.sleep(0.01)


def test_too_old_resource_version_is_410_then_relist(fake_apiserver: FakeApiServer, client: Client) -> None:
    fake_apiserver.upsert(pod("p1"))
    old_rv = list_rv(client)
    fake_apiserver.delete("pods", "default", "p1")
    fake_apiserver.upsert(pod("p2"))
    fake_apiserver.compact()
    with pytest.raises(ApiError) as e:
        for _ in watch(client, Pod, resourceVersion=old_rv, timeoutSeconds=2):
            pass
    assert e.value.status.code == 410 and e.value.status.reason == "Expired"
    assert "too old resource version" in e.value.status.message
    # The watch request itself was a 200: the 410 is an ERROR event, as the real server does it.
    assert fake_apiserver.requests_matching("GET", "/api/v1/pods", watch="true")[-1].status == 200
    # Relist (RV unset) shows the state as it is now, and a watch from its RV works.
    lst = client.list(Pod, namespace="*")
    assert [p.metadata.name for p in lst] == ["p2"]
    w = Collector(watch(client, Pod, resourceVersion=lst.resourceVersion, timeoutSeconds=10))
    fake_apiserver.upsert(pod("p3"))
    w.wait(lambda: w.events)
    assert w.summary() == [("ADDED", "p3")] and w.error is None
    w.end(fake_apiserver)


def test_expire_open_watch_and_exact_list(fake_apiserver: FakeApiServer, client: Client) -> None:
    rv = list_rv(client)
    w = Collector(watch(client, Pod, resourceVersion=rv, timeoutSeconds=10))
    wait_for_watches(fake_apiserver, 1)
    fake_apiserver.expire_watches()
    w.join()
    assert isinstance(w.error, ApiError) and w.error.status.code == 410
    fake_apiserver.upsert(pod("p1"))
    fake_apiserver.compact()
    with pytest.raises(ApiError) as e:
        list(client._client.request("list", res=Pod, namespace="*",
                                    params={"resourceVersion": rv, "resourceVersionMatch": "Exact"}))
    assert e.value.status.code == 410


def test_dropped_connection_then_resume_from_last_rv(fake_apiserver: FakeApiServer, client: Client) -> None:
    rv = list_rv(client)
    w = Collector(watch(client, Pod, resourceVersion=rv, timeoutSeconds=10))
    fake_apiserver.upsert(pod("p1"))
    w.wait(lambda: len(w.events) == 1)
    last = w.events[-1][1].metadata.resourceVersion
    fake_apiserver.drop_watches()
    w.join()
    assert isinstance(w.error, httpx2.HTTPError) and not isinstance(w.error, ApiError)
    fake_apiserver.upsert(pod("p2"))  # happens while we are disconnected
    w2 = Collector(watch(client, Pod, resourceVersion=last, timeoutSeconds=10))
    w2.wait(lambda: w2.events)
    w2.end(fake_apiserver)
    assert w2.summary() == [("ADDED", "p2")]


def test_stop_start_keeps_state_and_port(fake_apiserver: FakeApiServer, client: Client) -> None:
    fake_apiserver.upsert(pod("p1"))
    port, rv = fake_apiserver.port, fake_apiserver.resource_version
    w = Collector(watch(client, Pod, resourceVersion=str(rv), timeoutSeconds=10))
    wait_for_watches(fake_apiserver, 1)
    fake_apiserver.stop()
    w.join()
    assert isinstance(w.error, httpx2.HTTPError)
    with pytest.raises(httpx2.ConnectError):
        client.get(Pod, "p1", namespace="default")
    fake_apiserver.start()
    assert fake_apiserver.port == port and fake_apiserver.resource_version == rv
    assert client.get(Pod, "p1", namespace="default").metadata.resourceVersion == str(rv)


def test_slow_responses_time_out_the_client(fake_apiserver: FakeApiServer, kubeconfig: Path) -> None:
    fake_apiserver.set_delay(1.0)
    c = Client(KubeConfig.from_file(str(kubeconfig)), trust_env=False, timeout=httpx2.Timeout(0.3))
    try:
        with pytest.raises(httpx2.ReadTimeout):
            list(c.list(Pod, namespace="*"))
    finally:
        c.close()
    fake_apiserver.set_delay(0)


@pytest.mark.parametrize("code,reason", [(401, "Unauthorized"), (403, "Forbidden")])
def test_auth_failures(fake_apiserver: FakeApiServer, client: Client, code: int, reason: str) -> None:
    fake_apiserver.set_auth_failure(code)
    with pytest.raises(ApiError) as e:
        list(client.list(Pod, namespace="*"))
    assert e.value.status.code == code and e.value.status.reason == reason
    with pytest.raises(httpx2.HTTPStatusError) as e2:  # lightkube's watch raises the bare HTTP error
        for _ in watch(client, Pod, timeoutSeconds=1):
            pass
    e2.value.response.read()
    assert e2.value.response.status_code == code and e2.value.response.json()["reason"] == reason
    fake_apiserver.set_auth_failure(None)
    assert list(client.list(Pod, namespace="*")) == []


def test_wrong_token_is_401(fake_apiserver: FakeApiServer, tmp_path: Path) -> None:
    kc = fake_apiserver.write_kubeconfig(tmp_path / "bad", token="wrong")
    c = Client(KubeConfig.from_file(str(kc)), trust_env=False)
    try:
        with pytest.raises(ApiError) as e:
            c.get(Node, NODE)
        assert e.value.status.code == 401
    finally:
        c.close()


def test_patch_node_status_volumes_in_use(fake_apiserver: FakeApiServer, client: Client) -> None:
    fake_apiserver.upsert({"kind": "Node", "metadata": {"name": NODE}, "spec": {"podCIDR": "10.0.0.0/24"},
                           "status": {"conditions": [{"type": "Ready", "status": "True"},
                                                     {"type": "DiskPressure", "status": "False"}]}})
    vols = ["kubernetes.io/csi/hostpath.csi.k8s.io^v1", "kubernetes.io/csi/hostpath.csi.k8s.io^v2"]
    client.patch(Node.Status, NODE, {"status": {"volumesInUse": vols,
                                                "$setElementOrder/conditions": [{"type": "Ready"}],
                                                "conditions": [{"type": "Ready", "status": "False"}]},
                                     "spec": {"podCIDR": "ignored"}},
                 patch_type=PatchType.STRATEGIC)
    node = fake_apiserver.get("nodes", None, NODE)
    assert node["status"]["volumesInUse"] == vols
    assert node["status"]["conditions"] == [{"type": "Ready", "status": "False"},
                                            {"type": "DiskPressure", "status": "False"}]
    assert node["spec"]["podCIDR"] == "10.0.0.0/24"  # the status subresource leaves spec alone
    got = client.patch(Node.Status, NODE, {"status": {"volumesInUse": vols[:1]}}, patch_type=PatchType.MERGE)
    assert got.status.volumesInUse == vols[:1]
    req = fake_apiserver.requests_matching("PATCH", f"/api/v1/nodes/{NODE}/status")
    assert [r.content_type for r in req] == ["application/strategic-merge-patch+json", "application/merge-patch+json"]


def test_create_and_patch_event(fake_apiserver: FakeApiServer, client: Client) -> None:
    ev = Event(metadata=ObjectMeta(generateName="p1.", namespace="default"),
               involvedObject=ObjectReference(kind="Pod", name="p1", namespace="default", uid="u1"),
               reason="FailedMount", message="MountVolume.SetUp failed for volume \"v\"", type="Warning",
               source=EventSource(component="volumemanager", host=NODE), count=1)
    created = client.create(ev)
    assert created.metadata.name.startswith("p1.") and created.metadata.uid
    client.patch(Event, created.metadata.name, {"count": 2}, namespace="default", patch_type=PatchType.STRATEGIC)
    assert fake_apiserver.get("events", "default", created.metadata.name)["count"] == 2
    with pytest.raises(ApiError) as e:
        client.create(Event(metadata=ObjectMeta(name=created.metadata.name, namespace="default"),
                            involvedObject=ObjectReference(kind="Pod", name="p1")))
    assert e.value.status.code == 409 and e.value.status.reason == "AlreadyExists"


def test_csinode_create_and_update(fake_apiserver: FakeApiServer, client: Client) -> None:
    created = client.create(CSINode(metadata=ObjectMeta(name=NODE), spec=CSINodeSpec(drivers=[])))
    created.spec.drivers = [CSINodeDriver(name="hostpath.csi.k8s.io", nodeID=NODE, topologyKeys=["zone"])]
    updated = client.replace(created)
    assert updated.spec.drivers[0].nodeID == NODE
    assert int(updated.metadata.resourceVersion) > int(created.metadata.resourceVersion)
    with pytest.raises(ApiError) as e:  # a stale resourceVersion is a conflict
        client.replace(created)
    assert e.value.status.code == 409


def test_token_request(fake_apiserver: FakeApiServer, client: Client) -> None:
    fake_apiserver.upsert({"kind": "ServiceAccount", "metadata": {"name": "default", "namespace": "default"}})
    p = fake_apiserver.upsert(pod("p1"))
    tr = ServiceAccount.Token(metadata=ObjectMeta(namespace="default"), spec=TokenRequestSpec(
        audiences=["vault"], expirationSeconds=3607,
        boundObjectRef=BoundObjectReference(kind="Pod", apiVersion="v1", name="p1", uid=p["metadata"]["uid"])))
    got = client.create(tr, "default", namespace="default")
    exp = datetime.fromisoformat(str(got.status.expirationTimestamp).replace("Z", "+00:00"))
    assert 3500 < (exp - datetime.now(timezone.utc)).total_seconds() <= 3607
    payload = got.status.token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["aud"] == ["vault"] and claims["sub"] == "system:serviceaccount:default:default"
    assert claims["kubernetes.io"]["pod"] == {"name": "p1", "uid": p["metadata"]["uid"]}
    req = fake_apiserver.requests_matching("POST", "/api/v1/namespaces/default/serviceaccounts/default/token")[0]
    assert req.body["kind"] == "TokenRequest" and req.body["spec"]["expirationSeconds"] == 3607
    tr.spec.boundObjectRef.uid = "not-the-pod"
    with pytest.raises(ApiError) as e:
        client.create(tr, "default", namespace="default")
    assert e.value.status.code == 409


def test_discovery_endpoints(fake_apiserver: FakeApiServer) -> None:
    h = {"Authorization": f"Bearer {fake_apiserver.token}"}
    with httpx2.Client(base_url=fake_apiserver.url, headers=h, trust_env=False) as c:
        assert c.get("/version").json()["major"] == "1"
        names = {r["name"] for r in c.get("/apis/storage.k8s.io/v1").json()["resources"]}
        assert {"storageclasses", "csidrivers", "csinodes", "volumeattachments"} <= names
        assert "serviceaccounts/token" in {r["name"] for r in c.get("/api/v1").json()["resources"]}
        assert c.get("/apis").json()["groups"][0]["name"] == "storage.k8s.io"


def test_runs_as_a_subprocess(tmp_path: Path) -> None:
    import subprocess
    import sys
    objs = tmp_path / "objs.json"
    objs.write_text(json.dumps([pod("p1")]))
    kc = tmp_path / "kc"
    proc = subprocess.Popen([sys.executable, "-m", "tests.fake_apiserver", str(kc), str(objs)],
                            stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        c = Client(KubeConfig.from_file(str(kc)), trust_env=False)
        try:
            assert [p.metadata.name for p in c.list(Pod, namespace="*")] == ["p1"]
        finally:
            c.close()
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_strategic_merge_and_selectors_edge_cases() -> None:
    from tests.fake_apiserver.patch import strategic_merge_patch
    from tests.fake_apiserver.store import field_selector_matches, label_selector_matches
    old = {"status": {"conditions": [{"type": "A", "status": "1"}, {"type": "B", "status": "1"}],
                      "volumesInUse": ["x", "y"]}}
    new = strategic_merge_patch(old, {"status": {"conditions": [{"type": "A", "$patch": "delete"}],
                                                 "volumesInUse": ["z"], "$retainKeys": ["conditions"]}})
    assert new == {"status": {"conditions": [{"type": "B", "status": "1"}], "volumesInUse": ["z"]}}
    o = {"metadata": {"name": "n", "labels": {"a": "1"}}, "spec": {"nodeName": "x"}}
    assert field_selector_matches("spec.nodeName=x,metadata.name!=m", o)
    assert not field_selector_matches("spec.nodeName==y", o)
    assert field_selector_matches("spec.missing=", o)
    assert label_selector_matches("a in (1,2),!b", o) and not label_selector_matches("a notin (1)", o)
    with pytest.raises(ValueError):
        field_selector_matches("spec.nodeName~x", o)
