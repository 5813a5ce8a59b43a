"""The reconciler's remount decision (the kubelet's RequiresRemount) and the populator's
object index: a changed ConfigMap re-resolves only the pods that use it, and a mounted view
whose content token differs from the desired one gets a ``remount_volume`` action."""

from __future__ import annotations

from dataclasses import replace

import pytest

from operation_executor.executor import OperationExecutor
from operation_executor.generator import OperationGenerator
from operation_executor.plugin import PluginRegistry
from operation_executor.types import MarkVolumeOpts, PodRef, VolumeSpec, VolumeToMount
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.cache.desired_state import DesiredPod, DesiredStateOfWorld
from volumemanager.manifests import models as m
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins import build_plugins
from volumemanager.populator import DesiredStatePopulator
from volumemanager.reconciler import REMOUNT_VOLUME, Reconciler

PLUGIN = "kubernetes.io/configmap"
POD = PodRef("u1", "demo", "web")


@pytest.fixture
def world():
    dsw, asw, executor = DesiredStateOfWorld(), ActualStateOfWorld(), OperationExecutor(max_workers=1)
    rec = Reconciler(dsw, asw, executor, OperationGenerator(PluginRegistry(), asw), ready_to_unmount=lambda: True)
    yield dsw, asw, rec
    executor.shutdown()


def _vtm(generation):
    spec = VolumeSpec(name="cfg", plugin_name=PLUGIN, source=None, content_generation=generation)
    return VolumeToMount(f"{PLUGIN}/u1-cfg", POD, "cfg", spec, PLUGIN, False)


def _mounted(asw, vtm):
    asw.mark_volume_mounted(MarkVolumeOpts(vtm.volume_id, POD, "cfg", vtm.spec, PLUGIN, "/x", False))


def test_remount_only_when_the_content_token_differs(world):
    dsw, asw, rec = world
    dsw.set_pod(DesiredPod(POD, (_vtm("a"),)))
    _mounted(asw, _vtm("a"))
    assert rec.decide() == []
    dsw.set_pod(DesiredPod(POD, (_vtm("b"),)))
    actions = rec.decide()
    assert [a.kind for a in actions] == [REMOUNT_VOLUME]
    assert "content changed" in actions[0].to_dict()["detail"]
    _mounted(asw, _vtm("b"))
    assert rec.decide() == []


def test_a_view_adopted_from_disk_is_set_up_once_more(world):
    """Reconstruction knows no token: one set_up follows, which writes nothing when the files
    are already right (and never remounts the tmpfs)."""
    dsw, asw, rec = world
    dsw.set_pod(DesiredPod(POD, (_vtm("a"),)))
    _mounted(asw, _vtm(None))
    assert [a.kind for a in rec.decide()] == [REMOUNT_VOLUME]


def test_volumes_without_a_token_never_remount(world):
    dsw, asw, rec = world
    dsw.set_pod(DesiredPod(POD, (_vtm(None),)))
    _mounted(asw, _vtm("stale"))
    assert rec.decide() == []


class Source:
    """A desired-state source at the edge: hands out the snapshots the test sets."""

    name = "test"
    synced = True

    def __init__(self, snap):
        self.snap = snap

    def snapshot(self):
        return self.snap

    def start(self, cb):
        pass

    def stop(self):
        pass


def _snap(gen, pods, configmaps):
    return replace(m.Snapshot.empty(), pods=pods, configmaps=configmaps, generation=gen)


def _pod(name, cm):
    vol = m.PodVolume("cfg", m.ConfigMapVolumeSource(cm, (), 0o644, False))
    return m.Pod("demo", name, f"uid-{name}", (vol,), m.Origin(f"{name}.yaml", 1))


def _cm(name, value):
    return m.ConfigMap("demo", name, {"k": value}, {}, False, m.Origin(f"{name}.yaml", 1))


def test_a_configmap_change_reresolves_only_its_pods(tmp_path):
    plugins = build_plugins(DaemonPluginHost(str(tmp_path), "node", None))
    a, b = _pod("a", "one"), _pod("b", "two")
    one, two = _cm("one", "1"), _cm("two", "2")
    source = Source(_snap(1, {a.uid: a, b.uid: b}, {("demo", "one"): one, ("demo", "two"): two}))
    changes: list[set[str]] = []
    dsw = DesiredStateOfWorld()
    pop = DesiredStatePopulator(source, dsw, plugins, changes.append)
    pop.sync()
    gen_b = dsw.get_pod(b.uid).volumes[0].spec.content_generation
    assert gen_b is not None
    source.snap = _snap(2, {a.uid: a, b.uid: b}, {("demo", "one"): _cm("one", "changed"), ("demo", "two"): two})
    changed = pop.sync()
    assert changed == {f"{PLUGIN}/uid-a-cfg"}
    assert dsw.get_pod(b.uid).volumes[0].spec.content_generation == gen_b
    # a configmap that appears later re-resolves the pod that waited for it
    c = _pod("c", "three")
    source.snap = _snap(3, {a.uid: a, b.uid: b, c.uid: c}, source.snap.configmaps)
    pop.sync()
    before = dsw.get_pod(c.uid).volumes[0].spec.content_generation
    source.snap = _snap(4, source.snap.pods, {**source.snap.configmaps, ("demo", "three"): _cm("three", "3")})
    assert pop.sync() == {f"{PLUGIN}/uid-c-cfg"}
    assert dsw.get_pod(c.uid).volumes[0].spec.content_generation != before
