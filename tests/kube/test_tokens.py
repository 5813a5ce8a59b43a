"""The token manager against the fake API server, through lightkube (nothing mocked): the
TokenRequest it sends (audience, expirationSeconds, boundObjectRef = the pod), the cache per
(pod, service account, audience, expiration), the refresh timer at 80 % of the lifetime the
server granted, retries of a failing request, and a gone pod's timer that requests nothing.

The VolumeAttachment name (``attachment_name``) is checked against the kubelet's rule here too.
"""

from __future__ import annotations

import hashlib
import threading
import time

import pytest

from tests.daemon_harness import wait_until
from tests.fake_apiserver.conftest import fake_apiserver, kubeconfig  # noqa: F401 - pytest fixtures
from volumemanager.kube.attachments import attachment_name
from volumemanager.kube.config import ApiServerConfig, make_client
from volumemanager.kube.tokens import TokenKey, TokenManager, TokenUnavailable, lightkube_requester

NS = "demo"


def _pod(fake, name="web", uid="uid-web", sa="builder"):
    fake.upsert({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": NS}})
    return fake.upsert({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "uid": uid},
                        "spec": {"nodeName": "n1", "serviceAccountName": sa, "containers": []}})


class _Changes:
    def __init__(self) -> None:
        self.uids: list[str] = []
        self.times: list[float] = []
        self.lock = threading.Lock()

    def __call__(self, uid: str) -> None:
        with self.lock:
            self.uids.append(uid)
            self.times.append(time.monotonic())


@pytest.fixture
def manager_factory(kubeconfig):  # noqa: F811 - the fixture
    made: list[TokenManager] = []

    def make(**kw) -> tuple[TokenManager, _Changes]:
        changes = _Changes()
        client = make_client(ApiServerConfig(kubeconfig=str(kubeconfig)), timeout=5.0)
        m = TokenManager(lightkube_requester(client), changes, **kw)
        made.append(m)
        return m, changes

    yield make
    for m in made:
        m.stop()


def _token_requests(fake):
    return [r for r in fake.requests if r.method == "POST" and r.path.endswith("/token")]


def _uid_of(fake, name):
    return fake.get("pods", NS, name)["metadata"]["uid"]


def test_first_lookup_requests_a_bound_token_and_the_answer_is_cached(fake_apiserver, manager_factory):  # noqa: F811
    _pod(fake_apiserver)
    uid = _uid_of(fake_apiserver, "web")
    m, changes = manager_factory()
    key = TokenKey(uid, NS, "web", "builder", "vault", 3600)
    with pytest.raises(TokenUnavailable, match="being requested"):
        m.get(key)
    assert wait_until(lambda: changes.uids == [uid], timeout=10)
    token = m.get(key)
    assert token == fake_apiserver.tokens_issued[-1].encode()
    reqs = _token_requests(fake_apiserver)
    assert len(reqs) == 1
    assert reqs[0].path == f"/api/v1/namespaces/{NS}/serviceaccounts/builder/token"
    spec = reqs[0].body["spec"]
    assert spec["audiences"] == ["vault"]
    assert spec["expirationSeconds"] == 3600
    assert spec["boundObjectRef"]["kind"] == "Pod"
    assert spec["boundObjectRef"]["name"] == "web"
    assert spec["boundObjectRef"]["uid"] == uid
    # Cached: asked again, no new request; another audience is another token.
    assert m.get(key) == token
    assert len(_token_requests(fake_apiserver)) == 1
    other = TokenKey(uid, NS, "web", "builder", "", 3600)
    with pytest.raises(TokenUnavailable):
        m.get(other)
    assert wait_until(lambda: len(changes.uids) == 2, timeout=10)
    assert m.get(other) != token
    assert "audiences" not in (_token_requests(fake_apiserver)[-1].body["spec"] or {}) or \
        not _token_requests(fake_apiserver)[-1].body["spec"]["audiences"]
    # Nothing the manager describes holds a token.
    assert token.decode() not in repr(m.describe())


def test_refresh_at_80_percent_of_the_granted_lifetime(fake_apiserver, manager_factory):  # noqa: F811
    _pod(fake_apiserver)
    uid = _uid_of(fake_apiserver, "web")
    fake_apiserver.set_token_lifetime(4.0)  # asked for 600 s, granted ~4 s (seconds precision: 3-4 s)
    m, changes = manager_factory()
    key = TokenKey(uid, NS, "web", "builder", "", 600)
    with pytest.raises(TokenUnavailable):
        m.get(key)
    assert wait_until(lambda: len(changes.uids) >= 1, timeout=10)
    first, t0 = m.get(key), changes.times[0]
    assert wait_until(lambda: len(changes.uids) >= 2, timeout=10)
    elapsed = changes.times[1] - t0
    # 80 % of a 3..4 s lifetime: 2.4..3.2 s (plus the request's own time).
    assert 2.0 <= elapsed <= 4.0, elapsed
    second = m.get(key)
    assert second != first and second == fake_apiserver.tokens_issued[-1].encode()
    assert _token_requests(fake_apiserver)[-1].body["spec"]["expirationSeconds"] == 600


def test_a_failing_request_is_retried_and_says_why(fake_apiserver, manager_factory):  # noqa: F811
    fake_apiserver.upsert({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": "web", "namespace": NS, "uid": "uid-web"},
                           "spec": {"nodeName": "n1", "serviceAccountName": "builder", "containers": []}})
    uid = _uid_of(fake_apiserver, "web")
    m, changes = manager_factory(retry_initial=0.2, retry_max=0.4)
    key = TokenKey(uid, NS, "web", "builder", "", 3600)
    with pytest.raises(TokenUnavailable):
        m.get(key)
    assert wait_until(lambda: changes.uids == [uid], timeout=10)
    with pytest.raises(TokenUnavailable, match="TokenRequest for service account demo/builder failed: .*404"):
        m.get(key)
    fake_apiserver.upsert({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder", "namespace": NS}})
    assert wait_until(lambda: len(changes.uids) >= 2, timeout=10)
    assert m.get(key) == fake_apiserver.tokens_issued[-1].encode()
    assert len(_token_requests(fake_apiserver)) >= 2


def test_a_gone_pods_timer_requests_nothing(fake_apiserver, manager_factory):  # noqa: F811
    _pod(fake_apiserver)
    uid = _uid_of(fake_apiserver, "web")
    fake_apiserver.set_token_lifetime(2.0)
    alive = {uid}
    m, changes = manager_factory(alive=lambda u: u in alive)
    key = TokenKey(uid, NS, "web", "builder", "", 600)
    with pytest.raises(TokenUnavailable):
        m.get(key)
    assert wait_until(lambda: len(changes.uids) == 1, timeout=10)
    alive.clear()
    sent = len(_token_requests(fake_apiserver))
    time.sleep(2.5)  # past the refresh moment (80 % of 1..2 s)
    assert len(_token_requests(fake_apiserver)) == sent
    assert m.describe() == []


def test_volume_attachment_name_is_the_kubelets():
    want = "csi-" + hashlib.sha256(b"vol-1" + b"loop.csi.example.com" + b"node-a").hexdigest()
    assert attachment_name("vol-1", "loop.csi.example.com", "node-a") == want
    assert len(want) == 4 + 64
