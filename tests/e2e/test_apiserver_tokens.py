"""Issue 15, item 6, end to end: a projected ``serviceAccountToken`` of a pod from the API
server gets a TokenRequest token bound to the pod (the fake's bytes in the file), written
through the atomic writer on the projected tmpfs, and written again when the token is
refreshed at 80 % of its (short, by the fake's control) lifetime. The token is never in the
daemon's log, ``status --json`` or ``explain``. A manifest pod on the same daemon keeps its
clear waiting reason (the API server knows no such pod to bind a token to).
"""

from __future__ import annotations

import os
import time

import pytest

from tests.daemon_harness import wait_until
from tests.fake_apiserver.conftest import fake_apiserver, kubeconfig  # noqa: F401 - pytest fixtures
from tests.fixtures_mounts import require_root

pytestmark = [pytest.mark.timeout(120)]

NODE = "testnode"


@pytest.fixture(autouse=True)
def _root():
    require_root()


def _token_pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "demo"},
            "spec": {"nodeName": NODE, "serviceAccountName": "builder",
                     "containers": [{"name": "c", "image": "busybox"}],
                     "volumes": [{"name": "creds", "projected": {"sources": [
                         {"serviceAccountToken": {"path": "token", "audience": "vault", "expirationSeconds": 600}},
                         {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                     ]}}]},
            "status": {"phase": "Running"}}


def _token_requests(fake):
    return [r for r in fake.requests if r.method == "POST" and r.path.endswith("/token")]


def test_projected_token_from_token_request_refreshed_and_never_shown(
        daemon_factory, fake_apiserver, kubeconfig):  # noqa: F811
    fake_apiserver.upsert({"apiVersion": "v1", "kind": "ServiceAccount",
                           "metadata": {"name": "builder", "namespace": "demo"}})
    fake_apiserver.set_token_lifetime(4.0)  # 600 s asked, ~4 s granted: the refresh comes at ~3 s
    fake_apiserver.upsert(_token_pod("app"))
    d = daemon_factory(["--kubeconfig", str(kubeconfig)])
    d.write_manifest("static.yaml", """\
apiVersion: v1
kind: Pod
metadata: {name: static, namespace: demo}
spec:
  volumes:
  - name: token
    projected:
      sources:
      - serviceAccountToken: {path: token}
""")
    assert d.cli("wait", "demo/app", "--timeout", "30").returncode == 0, \
        d.cli("explain", "demo/app", check=False).stdout
    row = next(v for v in d.status()["volumes"] if v["pod"] == "demo/app")
    path = os.path.join(row["mount_path"], "token")
    uid = fake_apiserver.get("Pod", "demo", "app")["metadata"]["uid"]

    def current() -> str:
        with open(path) as f:
            return f.read()

    first = current()
    assert first in fake_apiserver.tokens_issued
    with open(os.path.join(row["mount_path"], "name")) as f:
        assert f.read() == "app"
    req = _token_requests(fake_apiserver)[0]
    assert req.path == "/api/v1/namespaces/demo/serviceaccounts/builder/token"
    spec = req.body["spec"]
    assert spec["audiences"] == ["vault"] and spec["expirationSeconds"] == 600
    assert spec["boundObjectRef"] == {"apiVersion": "v1", "kind": "Pod", "name": "app", "uid": uid}
    assert os.path.islink(os.path.join(row["mount_path"], "..data"))  # the atomic writer's layout

    # Refreshed at 80 % of the granted lifetime: the file is written again with the new token.
    t0 = time.monotonic()
    wait_until(lambda: current() != first, 15, 0.05, what="the refreshed token in the file")
    print(f"token rewritten {time.monotonic() - t0:.2f} s after the test saw the first one")
    assert current() == fake_apiserver.tokens_issued[-1] or current() in fake_apiserver.tokens_issued
    assert len(_token_requests(fake_apiserver)) >= 2

    # The manifest pod waits, saying why.
    explain = d.cli("explain", "demo/static", check=False).stdout
    assert "serviceAccountToken needs an API server" in explain, explain

    # Never in the log, status or explain.
    shown = d.log() + d.cli("status", "--json").stdout + d.cli("status").stdout + \
        d.cli("explain", "demo/app", check=False).stdout
    for token in fake_apiserver.tokens_issued:
        assert token not in shown
        for part in token.split("."):
            assert part not in shown

    fake_apiserver.delete("Pod", "demo", "app")
    (d.manifests / "static.yaml").unlink()
    wait_until(lambda: not d.mounts(), 20, what="nothing mounted")
    # A gone pod's token is not refreshed any more.
    sent = len(_token_requests(fake_apiserver))
    time.sleep(4.0)
    assert len(_token_requests(fake_apiserver)) == sent
