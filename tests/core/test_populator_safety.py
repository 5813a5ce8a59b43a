"""Issue 11, items 3-4 in the populator, where the logic is pure: the unmount gate follows the
source's health; one claim per PV; one pod per UID on the node.

The source is a fake at the outermost edge (a snapshot and a health value); the DSW, the
plugins and the populator are the real ones.
"""

from __future__ import annotations

import logging

import pytest

from mount_utils.mounter import FakeMounter
from volumemanager.cache.desired_state import DesiredStateOfWorld
from volumemanager.manifests.loader import load_bytes
from volumemanager.manifests.models import PersistentVolume, PersistentVolumeClaim, Pod, Snapshot
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.populator import DesiredStatePopulator, HostPodVolume, bind_claims
from volumemanager.sources.base import SourceHealth
from volumemanager.plugins import build_plugins

PLUGINS = build_plugins(DaemonPluginHost("/nonexistent/vm-root", "n", FakeMounter()))


class FakeSource:
    name = "fake:test"

    def __init__(self) -> None:
        self.snap = Snapshot.empty()
        self.state = SourceHealth(self.name, True, None, None)

    def start(self, on_change) -> None:
        pass

    def stop(self) -> None:
        pass

    def snapshot(self) -> Snapshot:
        return self.snap

    def health(self) -> SourceHealth:
        return self.state

    @property
    def synced(self) -> bool:
        return self.state.synced

    def set(self, text: str) -> None:
        objects = ()
        if text:
            result = load_bytes(text.encode(), "f.yaml")
            assert result.errors == (), result.errors
            objects = result.objects
        snap = Snapshot({}, {}, {}, {}, (), self.snap.generation + 1)
        for o in objects:
            if isinstance(o, Pod):
                snap.pods.setdefault(o.uid, o)
            elif isinstance(o, PersistentVolume):
                snap.pvs[o.name] = o
            elif isinstance(o, PersistentVolumeClaim):
                snap.pvcs[(o.namespace, o.name)] = o
        self.snap = snap


class Host:
    """What the node has mounted, as the populator's reader sees it."""

    def __init__(self) -> None:
        self.volumes: list[HostPodVolume] = []

    def __call__(self):
        return list(self.volumes)


@pytest.fixture
def world():
    source, host, dsw = FakeSource(), Host(), DesiredStateOfWorld()
    pop = DesiredStatePopulator(source, dsw, PLUGINS, lambda ids: None, host_volumes=host)
    return source, host, dsw, pop


def pv(name: str, claim_ref: str | None = None) -> str:
    ref = ""
    if claim_ref:
        ns, n = claim_ref.split("/")
        ref = f"  claimRef: {{namespace: {ns}, name: {n}}}\n"
    return (f"---\nkind: PersistentVolume\nmetadata: {{name: {name}}}\nspec:\n"
            f"  hostPath: {{path: /srv/{name}}}\n{ref}")


def pvc(name: str, volume: str, created: str | None = None, ns: str = "demo") -> str:
    ts = f", creationTimestamp: '{created}'" if created else ""
    return f"---\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: {ns}{ts}}}\nspec: {{volumeName: {volume}}}\n"


def pod(name: str, claim: str | None = None, uid: str | None = None, ns: str = "demo") -> str:
    u = f", uid: {uid}" if uid else ""
    vol = f"persistentVolumeClaim: {{claimName: {claim}}}" if claim else "emptyDir: {}"
    return f"---\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}{u}}}\nspec:\n  volumes:\n  - {{name: vol, {vol}}}\n"


def mounted(dsw, key: str) -> list[str]:
    dp = dsw.find_pod(key)
    return [v.outer_name for v in dp.volumes] if dp else []


def reasons(dsw, key: str) -> list[str]:
    dp = dsw.find_pod(key)
    return [u.reason for u in dp.unresolved] if dp else []


# --- the unmount gate is the source's health ----------------------------------------------


def test_gate_stays_closed_while_the_source_is_failed(world):
    source, _, _, pop = world
    source.state = SourceHealth(source.name, False, 100.0, "manifest directory does not exist")
    pop.sync()
    assert not pop.has_added_pods
    source.state = SourceHealth(source.name, True, None, None)
    pop.sync(force=True)
    assert pop.has_added_pods
    # it fails later: closed again at once, without a new snapshot
    source.state = SourceHealth(source.name, True, 200.0, "manifest directory does not exist")
    assert not pop.has_added_pods
    assert [h.state for h in pop.source_healths()] == ["failed"]


def test_removed_pods_are_counted_in_one_log_line(world, caplog):
    source, _, dsw, pop = world
    source.set(pod("a") + pod("b") + pod("c"))
    pop.sync()
    caplog.set_level(logging.INFO, logger="volumemanager.populator")
    source.set(pod("c"))
    pop.sync()
    lines = [r.getMessage() for r in caplog.records if "torn down" in r.getMessage()]
    assert lines == ["2 pods are gone from fake:test: 2 volumes of 2 pods will be torn down"]


# --- one claim per PV -------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1])
def test_two_claims_on_one_pv_the_oldest_wins_in_either_order(world, order):
    source, _, dsw, pop = world
    docs = [pvc("young", "pv1", "2024-05-02T00:00:00Z") + pod("p-young", "young"),
            pvc("old", "pv1", "2024-05-01T00:00:00Z") + pod("p-old", "old")]
    if order:
        docs.reverse()
    source.set(pv("pv1") + "".join(docs))
    pop.sync()
    assert mounted(dsw, "demo/p-old") == ["vol"]
    assert mounted(dsw, "demo/p-young") == []
    assert reasons(dsw, "demo/p-young") == ["persistentvolume pv1 is bound to demo/old"]
    assert dsw.find_pod("demo/p-young").unresolved[0].waiting_for == "persistentvolume pv1 to be released by demo/old"


def test_without_timestamps_namespace_name_order_decides(world):
    source, _, dsw, pop = world
    source.set(pv("pv1") + pvc("b", "pv1") + pod("pb", "b") + pvc("a", "pv1") + pod("pa", "a"))
    pop.sync()
    assert mounted(dsw, "demo/pa") == ["vol"] and reasons(dsw, "demo/pb") == ["persistentvolume pv1 is bound to demo/a"]


def test_claim_ref_wins_over_age(world):
    source, _, dsw, pop = world
    source.set(pv("pv1", "demo/young") + pvc("young", "pv1", "2024-05-02T00:00:00Z") + pod("p-young", "young")
               + pvc("old", "pv1", "2024-05-01T00:00:00Z") + pod("p-old", "old"))
    pop.sync()
    assert mounted(dsw, "demo/p-young") == ["vol"]
    assert reasons(dsw, "demo/p-old") == ["persistentvolume pv1 is bound to demo/young (its claimRef), not demo/old"]


def test_the_claim_holding_a_pv_keeps_it_against_an_older_newcomer(world):
    source, host, dsw, pop = world
    source.set(pv("pv1") + pvc("young", "pv1", "2024-05-02T00:00:00Z") + pod("p-young", "young"))
    pop.sync()
    assert mounted(dsw, "demo/p-young") == ["vol"]
    # An older claim naming the same PV appears: the one already holding it keeps it.
    source.set(pv("pv1") + pvc("young", "pv1", "2024-05-02T00:00:00Z") + pod("p-young", "young")
               + pvc("old", "pv1", "2024-05-01T00:00:00Z") + pod("p-old", "old"))
    pop.sync()
    assert mounted(dsw, "demo/p-young") == ["vol"]
    assert reasons(dsw, "demo/p-old") == ["persistentvolume pv1 is bound to demo/young"]
    # The holder's pod goes, but its volume is still mounted: the newcomer still waits...
    host.volumes = [HostPodVolume(dsw.find_pod("demo/p-young").pod.uid, "demo/p-young", "pv1", "demo/young")]
    source.set(pv("pv1") + pvc("young", "pv1", "2024-05-02T00:00:00Z")
               + pvc("old", "pv1", "2024-05-01T00:00:00Z") + pod("p-old", "old"))
    pop.sync()
    assert reasons(dsw, "demo/p-old") == ["persistentvolume pv1 is bound to demo/young"]
    assert pop.needs_recheck
    # ... until it is torn down (the daemon rechecks after every tear-down).
    host.volumes = []
    pop.sync(recheck=True)
    assert mounted(dsw, "demo/p-old") == ["vol"] and not pop.needs_recheck


def test_bind_claims_is_pure_and_asks_for_holders_only_when_contested():
    asked = []

    def holders():
        asked.append(1)
        return {}

    src = FakeSource()
    src.set(pv("pv1") + pvc("a", "pv1") + pv("pv2") + pvc("b", "pv2"))
    assert bind_claims(src.snap, holders) == ({"pv1": "demo/a", "pv2": "demo/b"}, frozenset())
    assert asked == []


# --- one pod per UID on the node --------------------------------------------------------


def test_a_new_pod_with_a_uid_still_in_use_inherits_nothing(world):
    source, host, dsw, pop = world
    source.set(pod("a", uid="u1"))
    pop.sync()
    assert mounted(dsw, "demo/a") == ["vol"]
    host.volumes = [HostPodVolume("u1", "demo/a")]
    # a's document is replaced by b's, with the same uid, in one change
    source.set(pod("b", uid="u1"))
    pop.sync()
    assert dsw.find_pod("demo/a") is None
    assert mounted(dsw, "demo/b") == []
    (reason,) = reasons(dsw, "demo/b")
    assert "pod UID u1 is still in use on this node by pod demo/a" in reason
    assert pop.needs_recheck
    pop.sync(recheck=True)  # a's volume not torn down yet
    assert mounted(dsw, "demo/b") == []
    host.volumes = []
    pop.sync(recheck=True)
    assert mounted(dsw, "demo/b") == ["vol"] and not pop.needs_recheck


def test_volumes_found_on_disk_without_a_known_pod_do_not_refuse_a_pod(world):
    source, host, dsw, pop = world
    host.volumes = [HostPodVolume("u1", None)]  # reconstructed at start: pod unknown
    source.set(pod("a", uid="u1"))
    pop.sync()
    assert mounted(dsw, "demo/a") == ["vol"]


def test_the_same_pod_coming_back_is_not_refused(world):
    source, host, dsw, pop = world
    source.set(pod("a", uid="u1"))
    pop.sync()
    host.volumes = [HostPodVolume("u1", "demo/a")]
    source.set("")
    pop.sync()
    source.set(pod("a", uid="u1"))
    pop.sync()
    assert mounted(dsw, "demo/a") == ["vol"]
