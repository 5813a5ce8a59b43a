"""Drain at the reconciler level: the reconciler reads an empty desired state while drained
(the same teardown as a removal, in order), the real desired state is kept, nothing is
unmounted before it has been read whole, and ``--dry-run`` starts nothing."""

from __future__ import annotations

import os
import threading

import pytest

from operation_executor.executor import OperationExecutor
from operation_executor.generator import OperationGenerator
from operation_executor.plugin import PluginRegistry
from operation_executor.states import VolumeMountState
from operation_executor.types import PodRef, VolumeSpec, VolumeToMount
from tests.core.scripted_plugin import ScriptedPlugin
from tests.daemon_harness import wait_until
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.cache.desired_state import DesiredPod, DesiredStateOfWorld
from volumemanager.drain import EMPTY_DESIRED, DrainController
from volumemanager.reconciler import Reconciler

pytestmark = pytest.mark.timeout(30)


class World:
    def __init__(self, pods_dir: str, ready: bool = True) -> None:
        self.plugin = ScriptedPlugin(device_mountable=True)
        reg = PluginRegistry()
        reg.register(self.plugin)
        self.dsw = DesiredStateOfWorld()
        self.asw = ActualStateOfWorld()
        self.executor = OperationExecutor(max_workers=4)
        self.ready = ready
        self.drain = DrainController(self.dsw, self.asw, self.executor, pods_dir, lambda path: False)
        self.rec = Reconciler(self.drain.desired_view, self.asw, self.executor, OperationGenerator(reg, self.asw),
                              ready_to_unmount=lambda: self.ready)
        self.drain.attach(self.rec, lambda: self.ready)
        self.thread = threading.Thread(target=self.rec.run, daemon=True)
        self.thread.start()

    def add_pod(self, uid: str, *volumes: str) -> None:
        pod = PodRef(uid, "ns", uid)
        vtms = []
        for v in volumes:
            spec = VolumeSpec(name=v, plugin_name=self.plugin.name, source=None)
            vtms.append(VolumeToMount(self.plugin.volume_id(spec, pod), pod, v, spec, self.plugin.name, True))
        self.rec.mark_dirty(self.dsw.set_pod(DesiredPod(pod, tuple(vtms))))

    def mounted(self, volume: str, uid: str) -> bool:
        return self.asw.pod_state(f"{self.plugin.name}/{volume}", uid) is VolumeMountState.MOUNTED

    def settle(self) -> None:
        wait_until(lambda: self.executor.pending_count() == 0 and not self.rec._dirty, 10, what="quiescence")
        self.executor.wait_idle(5)

    def close(self) -> None:
        self.rec.stop()
        self.thread.join(5)
        self.executor.shutdown()


@pytest.fixture
def world(tmp_path):
    worlds = []

    def make(**kw) -> World:
        w = World(str(tmp_path / "pods"), **kw)
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        w.close()


def test_drain_tears_down_in_order_keeps_desired_state_and_uncordon_remounts(world):
    w = world()
    w.add_pod("a", "vol")
    w.add_pod("b", "vol")
    wait_until(lambda: w.mounted("vol", "a") and w.mounted("vol", "b"), what="both mounted")
    result = w.drain.drain()
    assert result["drained"] and not result["already_drained"] and result["volumes"] == 1
    wait_until(lambda: w.plugin.count("unmount_device") == 1, what="unstaged")
    assert w.plugin.methods()[-3:] == ["tear_down", "tear_down", "unmount_device"]
    assert len(w.dsw) == 2, "the desired state is kept"
    progress = w.drain.progress([])
    assert progress["complete"] and progress["volumes_left"] == 0 and progress["volumes_total"] == 1

    w.add_pod("c", "other")  # read while drained, not mounted
    w.settle()
    assert w.plugin.count("set_up") == 2 and not w.mounted("other", "c")
    assert "node is drained since" in w.drain.explain_line()
    assert w.drain.drain()["already_drained"]

    assert w.drain.uncordon()["was_drained"]
    wait_until(lambda: all(w.mounted(v, u) for v, u in (("vol", "a"), ("vol", "b"), ("other", "c"))),
               what="everything mounted again")
    assert w.drain.progress([]) is None and w.drain.explain_line() is None


def test_dry_run_lists_the_whole_teardown_and_starts_nothing(world):
    w = world()
    w.add_pod("a", "vol")
    wait_until(lambda: w.mounted("vol", "a"), what="mounted")
    w.settle()
    calls = list(w.plugin.calls)
    result = w.drain.drain(dry_run=True)
    assert [s["action"] for s in result["steps"]] == ["unmount_volume", "unmount_device"]
    assert not result["drained"] and not w.drain.is_drained()
    assert w.rec.decide(None, EMPTY_DESIRED) and w.executor.pending_count() == 0  # decide starts nothing
    w.rec.mark_all_dirty()
    w.settle()
    assert w.plugin.calls == calls and w.mounted("vol", "a")


def test_drain_waits_for_the_desired_state_to_be_read_whole(world):
    w = world(ready=False)
    w.add_pod("a", "vol")
    wait_until(lambda: w.mounted("vol", "a"), what="mounted")
    w.drain.drain()
    w.settle()
    assert w.plugin.count("tear_down") == 0
    progress = w.drain.progress([])
    assert progress["waiting_for_desired_state"] and not progress["complete"]
    assert [x["volume"] for x in progress["left"]] == ["vol"]
    w.ready = True
    w.rec.mark_all_dirty()
    wait_until(lambda: w.plugin.count("unmount_device") == 1, what="teardown once read")
    assert w.drain.progress([])["complete"]


def test_pod_dirs_left_keep_the_drain_incomplete(world, tmp_path):
    w = world()
    os.makedirs(tmp_path / "pods" / "some-uid" / "volumes")
    w.drain.drain()
    progress = w.drain.progress([])
    assert progress["pod_dirs_left"] == [str(tmp_path / "pods" / "some-uid")] and not progress["complete"]
    os.rmdir(tmp_path / "pods" / "some-uid" / "volumes")
    os.rmdir(tmp_path / "pods" / "some-uid")
    assert w.drain.progress([])["complete"]
    assert not w.drain.progress([{"mount_path": "/x"}])["complete"]
