"""A local PV whose directory is inside the daemon's root dir (``<root>/pods``, say) is
refused like such a hostPath: bind-mounting it would hand one pod every other pod's volumes."""

from __future__ import annotations

import pytest

from tests.daemon_harness import wait_until
from tests.fixtures_mounts import require_root
from tests.safety.test_format_safety import pv_docs, rows

pytestmark = [pytest.mark.timeout(120)]

OTHER = """\
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: demo}
spec:
  volumes:
  - name: scratch
    emptyDir: {}
"""


@pytest.mark.parametrize("below", ["pods", "", "plugins"])
def test_a_local_pv_directory_inside_the_root_dir_is_refused(daemon_factory, below):
    require_root()
    d = daemon_factory(start=False)
    d.write_manifest("other.yaml", OTHER)
    (d.root / "plugins").mkdir(parents=True, exist_ok=True)
    d.write_manifest("pv.yaml", pv_docs("sneaky", str(d.root / below) if below else str(d.root)))
    d.start()
    assert d.cli("wait", "demo/other", "--timeout", "20").returncode == 0

    def refused():
        r = rows(d).get("demo/sneaky", {})
        return r.get("error_code") == "INVALID_LOCAL_PATH" and r
    r = wait_until(refused, 20, 0.1, "the PV to be refused")
    assert "is inside the daemon's root dir" in r["last_error"]
    assert [m.mount_point for m in d.mounts() if "sneaky" in m.mount_point] == []
