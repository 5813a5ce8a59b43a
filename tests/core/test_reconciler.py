"""Reconciler state machine, kubelet scenarios (reference §6): ordering, reference counting
of staging, uncertain states, and no unmount before the desired state is read."""

from __future__ import annotations

import threading

import pytest

from operation_executor.executor import OperationExecutor
from operation_executor.generator import OperationGenerator
from operation_executor.plugin import PluginRegistry
from operation_executor.states import DeviceMountState, VolumeMountState
from operation_executor.types import PodRef, VolumeSpec, VolumeToMount
from tests.core.scripted_plugin import TIMEOUT, ScriptedPlugin, final
from tests.daemon_harness import wait_until
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.cache.desired_state import DesiredPod, DesiredStateOfWorld
from volumemanager.reconciler import Reconciler

pytestmark = pytest.mark.timeout(30)


class World:
    def __init__(self, device_mountable: bool = True, ready: bool = True) -> None:
        self.plugin = ScriptedPlugin(device_mountable)
        reg = PluginRegistry()
        reg.register(self.plugin)
        self.dsw = DesiredStateOfWorld()
        self.asw = ActualStateOfWorld()
        self.executor = OperationExecutor(max_workers=4)
        self.ready = ready
        self.rec = Reconciler(self.dsw, self.asw, self.executor, OperationGenerator(reg, self.asw),
                              ready_to_unmount=lambda: self.ready)
        self.thread = threading.Thread(target=self.rec.run, daemon=True)
        self.thread.start()

    def add_pod(self, uid: str, *volumes: str) -> None:
        pod = PodRef(uid, "ns", uid)
        vtms = []
        for v in volumes:
            spec = VolumeSpec(name=v, plugin_name=self.plugin.name, source=None)
            vtms.append(VolumeToMount(self.plugin.volume_id(spec, pod), pod, v, spec, self.plugin.name,
                                      self.plugin.is_device_mountable(spec)))
        self.rec.mark_dirty(self.dsw.set_pod(DesiredPod(pod, tuple(vtms))))

    def remove_pod(self, uid: str) -> None:
        self.rec.mark_dirty(self.dsw.remove_pod(uid))

    def vid(self, volume: str, uid: str | None = None) -> str:
        return f"{self.plugin.name}/{volume}" if uid is None else f"{self.plugin.name}/{uid}-{volume}"

    def mounted(self, volume: str, uid: str) -> bool:
        vid = self.vid(volume, None if self.plugin._dm else uid)
        return self.asw.pod_state(vid, uid) is VolumeMountState.MOUNTED

    def settle(self) -> None:
        wait_until(lambda: self.executor.pending_count() == 0 and not self.rec._dirty, 10, what="quiescence")
        self.executor.wait_idle(5)

    def close(self) -> None:
        self.rec.stop()
        self.thread.join(5)
        self.executor.shutdown()


@pytest.fixture
def world():
    worlds = []

    def make(**kw) -> World:
        w = World(**kw)
        worlds.append(w)
        return w

    yield make
    for w in worlds:
        w.close()


def test_two_pods_share_one_stage_and_unstage_after_last(world):
    w = world()
    w.add_pod("a", "vol")
    w.add_pod("b", "vol")
    wait_until(lambda: w.mounted("vol", "a") and w.mounted("vol", "b"), what="both mounted")
    assert w.plugin.count("mount_device") == 1 and w.plugin.count("set_up") == 2
    w.remove_pod("a")
    wait_until(lambda: w.plugin.count("tear_down") == 1, what="first teardown")
    w.settle()
    assert w.plugin.count("unmount_device") == 0
    w.remove_pod("b")
    wait_until(lambda: w.plugin.count("unmount_device") == 1, what="unstage")
    assert w.plugin.methods()[-3:] == ["tear_down", "tear_down", "unmount_device"]
    assert w.asw.get_volume(w.vid("vol")) is None


def test_stage_timeout_is_uncertain_and_unstaged_after_removal(world):
    w = world()
    w.plugin.script("mount_device", "vol", TIMEOUT, TIMEOUT, TIMEOUT, TIMEOUT, TIMEOUT, TIMEOUT)
    w.add_pod("a", "vol")
    wait_until(lambda: w.asw.device_state(w.vid("vol")) is DeviceMountState.UNCERTAIN, what="uncertain stage")
    w.remove_pod("a")
    wait_until(lambda: w.plugin.count("unmount_device") == 1, what="unstage of the uncertain device")
    w.settle()
    assert w.plugin.count("tear_down") == 0
    assert w.asw.get_volume(w.vid("vol")) is None


def test_stage_final_error_leaves_nothing_to_unstage(world):
    w = world()
    w.plugin.script("mount_device", "vol", final(), final(), final())
    w.add_pod("a", "vol")
    wait_until(lambda: w.plugin.count("mount_device") >= 1, what="a stage attempt")
    w.remove_pod("a")
    w.settle()
    assert w.plugin.count("unmount_device") == 0


def test_publish_timeout_then_success_converges(world):
    w = world()
    w.plugin.script("set_up", "vol", TIMEOUT)
    w.add_pod("a", "vol")
    wait_until(lambda: w.mounted("vol", "a"), 10, what="mount after a timed-out publish")
    assert w.plugin.count("set_up") == 2


def test_publish_timeout_then_removed_is_torn_down(world):
    w = world()
    w.plugin.script("set_up", "vol", *[TIMEOUT] * 5)
    w.add_pod("a", "vol")
    wait_until(lambda: w.asw.pod_state(w.vid("vol"), "a") is VolumeMountState.UNCERTAIN, what="uncertain publish")
    w.remove_pod("a")
    wait_until(lambda: w.plugin.count("unmount_device") == 1, what="cleanup")
    assert w.plugin.count("tear_down") == 1


def test_teardown_failure_keeps_it_possibly_mounted_and_retries(world):
    w = world(device_mountable=False)
    w.plugin.script("tear_down", "vol", final("busy"))
    w.add_pod("a", "vol")
    wait_until(lambda: w.mounted("vol", "a"), what="mounted")
    w.remove_pod("a")
    wait_until(lambda: w.plugin.count("tear_down") == 2, 10, what="teardown retried after backoff")
    wait_until(lambda: w.asw.get_volume(w.vid("vol", "a")) is None, what="gone")


def test_nothing_unmounted_before_ready(world):
    w = world(ready=False)
    w.add_pod("a", "vol")
    wait_until(lambda: w.mounted("vol", "a"), what="mounted")
    w.remove_pod("a")
    w.rec.mark_all_dirty()
    w.settle()
    assert w.plugin.count("tear_down") == 0
    w.ready = True
    w.rec.mark_all_dirty()
    wait_until(lambda: w.plugin.count("unmount_device") == 1, what="cleanup once ready")


def test_waiting_device_mounts_on_wake_without_backoff(world):
    w = world()
    w.plugin.device_present["vol"] = False
    w.add_pod("a", "vol")
    wait_until(lambda: w.vid("vol") in w.rec.waiting_volumes(), what="waiting")
    w.plugin.device_present["vol"] = True
    w.rec.wake_waiting()
    wait_until(lambda: w.mounted("vol", "a"), 2, interval=0.005, what="mount right after the device event")


def test_remove_and_readd_during_unstage_ends_mounted(world):
    w = world()
    w.add_pod("a", "vol")
    wait_until(lambda: w.mounted("vol", "a"), what="mounted")
    w.remove_pod("a")
    w.add_pod("a2", "vol")
    wait_until(lambda: w.mounted("vol", "a2"), what="mounted for the new pod")
    w.settle()
    assert w.asw.device_state(w.vid("vol")) is DeviceMountState.MOUNTED
