"""Several desired-state sources through the real populator: each pod resolves its claims in
its own source, even when both sources define the same claim; health is per source.

The sources are fakes at the outermost edge (a snapshot and a health value, as in
test_populator_safety); CombinedSource, the DSW, the plugins and the populator are real.
"""

from __future__ import annotations

from mount_utils.mounter import FakeMounter
from volumemanager.cache.desired_state import DesiredStateOfWorld
from volumemanager.manifests.loader import load_bytes
from volumemanager.manifests.models import PersistentVolume, PersistentVolumeClaim, Pod, Snapshot
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins import build_plugins
from volumemanager.populator import DesiredStatePopulator
from volumemanager.sources.base import SourceHealth
from volumemanager.sources.combined import CombinedSource

PLUGINS = build_plugins(DaemonPluginHost("/nonexistent/vm-root", "n", FakeMounter()))


class FakeSource:
    def __init__(self, name: str) -> None:
        self.name = name
        self.snap = Snapshot.empty()
        self.state = SourceHealth(name, True, None, None)

    def start(self, on_change) -> None:
        pass

    def stop(self) -> None:
        pass

    def resync(self) -> None:
        pass

    def snapshot(self) -> Snapshot:
        return self.snap

    def health(self) -> SourceHealth:
        return self.state

    def set(self, text: str) -> None:
        result = load_bytes(text.encode(), "f.yaml")
        assert result.errors == (), result.errors
        snap = Snapshot({}, {}, {}, {}, (), self.snap.generation + 1)
        for o in result.objects:
            if isinstance(o, Pod):
                snap.pods[o.uid] = o
            elif isinstance(o, PersistentVolume):
                snap.pvs[o.name] = o
            elif isinstance(o, PersistentVolumeClaim):
                snap.pvcs[(o.namespace, o.name)] = o
        self.snap = snap


def objects(pod: str, uid: str, pv: str, path: str) -> str:
    return f"""\
apiVersion: v1
kind: PersistentVolume
metadata: {{name: {pv}}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  hostPath: {{path: {path}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: demo}}
spec:
  accessModes: [ReadWriteOnce]
  volumeName: {pv}
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}, namespace: demo, uid: {uid}}}
spec:
  volumes: [{{name: d, persistentVolumeClaim: {{claimName: data}}}}]
"""


UID_M = "11111111-1111-1111-1111-111111111111"
UID_A = "22222222-2222-2222-2222-222222222222"


def pv_of(dsw: DesiredStateOfWorld, uid: str) -> str | None:
    dp = dsw.get_pod(uid)
    assert dp is not None and not dp.unresolved, dp
    return dp.volumes[0].spec.pv_name


def test_each_pod_resolves_its_claim_in_its_own_source():
    manifests, api = FakeSource("manifests"), FakeSource("api")
    manifests.set(objects("static", UID_M, "pv-m", "/srv/m"))
    api.set(objects("dynamic", UID_A, "pv-a", "/srv/a"))
    combined = CombinedSource([manifests, api])
    dsw = DesiredStateOfWorld()
    pop = DesiredStatePopulator(combined, dsw, PLUGINS, lambda ids: None)
    pop.sync()
    assert pv_of(dsw, UID_M) == "pv-m"
    assert pv_of(dsw, UID_A) == "pv-a"
    # The clash is reported, naming both sources.
    clash = [e for e in combined.snapshot().errors if "defined by both" in e.message]
    assert clash and "manifests" in clash[0].message and "api" in clash[0].message
    # The API's claim moves to another PV: the API pod follows, the manifest pod does not.
    api.set(objects("dynamic", UID_A, "pv-a2", "/srv/a2"))
    pop.sync()
    assert pv_of(dsw, UID_A) == "pv-a2"
    assert pv_of(dsw, UID_M) == "pv-m"


def test_without_a_clash_pods_use_the_merged_snapshot_and_health_is_per_source():
    manifests, api = FakeSource("manifests"), FakeSource("api")
    manifests.set(objects("static", UID_M, "pv-m", "/srv/m"))
    api.set(objects("dynamic", UID_A, "pv-a", "/srv/a").replace("name: data", "name: other")
            .replace("claimName: data", "claimName: other"))
    combined = CombinedSource([manifests, api])
    assert combined.snapshot_for_pod(UID_A) is None and combined.snapshot_for_pod(UID_M) is None
    dsw = DesiredStateOfWorld()
    pop = DesiredStatePopulator(combined, dsw, PLUGINS, lambda ids: None)
    pop.sync()
    assert (pv_of(dsw, UID_M), pv_of(dsw, UID_A)) == ("pv-m", "pv-a")
    assert pop.has_added_pods
    api.state = SourceHealth("api", True, 100.0, "HTTP 401: Unauthorized", 100.0)
    assert [h.name for h in pop.source_healths()] == ["manifests", "api"]
    assert not pop.has_added_pods  # one stale source holds back every teardown
    assert combined.health().failed_since == 100.0 and "api: HTTP 401" in (combined.health().error or "")
