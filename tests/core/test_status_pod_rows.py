"""``explain POD`` is a per-pod lookup (issue 16): ``status.desired_pod_rows`` and
``status.undesired_pod_rows`` build one pod's rows from (volume id, pod uid) lookups and the
actual state's per-pod index, and must show exactly the rows ``daemon_rows`` (what ``status``
shows) has for that pod, whatever the caches went through: mounts, errors, unresolved volumes,
shared staged volumes, pods that are no longer desired, a UID seen under another name,
unmounts and reconstruction from disk.

Real caches and a real executor (no operation runs: the results and states are written through
the same ActualStateUpdater methods the operations use).
"""

from __future__ import annotations

import random

import pytest

from operation_executor.errors import FinalError, WaitingError
from operation_executor.executor import OperationExecutor
from operation_executor.states import DeviceMountState, VolumeMountState
from operation_executor.types import MarkDeviceOpts, MarkVolumeOpts, MountedVolume, PodRef, VolumeSpec, VolumeToMount
from volumemanager import status as st
from volumemanager.cache.actual_state import ActualStateOfWorld
from volumemanager.cache.desired_state import DesiredPod, DesiredStateOfWorld, UnresolvedVolume

pytestmark = pytest.mark.timeout(60)

PLUGIN = "test/scripted"


def _vtm(pod: PodRef, name: str, shared: str | None = None) -> VolumeToMount:
    spec = VolumeSpec(name=shared or name, plugin_name=PLUGIN, source=None)
    vid = f"{PLUGIN}/{shared}" if shared else f"{PLUGIN}/{pod.uid}-{name}"
    return VolumeToMount(vid, pod, name, spec, PLUGIN, shared is not None)


def _mark_mounted(asw: ActualStateOfWorld, v: VolumeToMount, uncertain: bool = False) -> None:
    if v.device_mountable:
        asw.mark_device_mounted(MarkDeviceOpts(v.volume_id, v.spec, PLUGIN, "/dev/loop9", f"/g/{v.spec.name}"))
    opts = MarkVolumeOpts(v.volume_id, v.pod, v.outer_name, v.spec, PLUGIN, f"/p/{v.pod.uid}/{v.outer_name}",
                          v.device_mountable)
    (asw.mark_volume_uncertain if uncertain else asw.mark_volume_mounted)(opts)


def _expected(rows: list[st.VolumeRow], pod_key: str, desired_uid: str | None) -> list[dict]:
    """What explain used to do: filter every row."""
    if desired_uid is not None:
        return [r.to_dict() for r in rows if r.pod_uid == desired_uid and r.desired]
    return [r.to_dict() for r in rows if not r.desired and pod_key in (r.pod, r.pod_uid)]


def _check_every_pod(dsw: DesiredStateOfWorld, asw: ActualStateOfWorld, ex: OperationExecutor,
                     keys: set[str]) -> int:
    rows = st.daemon_rows(dsw, asw, ex)
    checked = 0
    for key in sorted(keys):
        dp = dsw.find_pod(key)
        if dp is not None:
            got = [r.to_dict() for r in st.desired_pod_rows(dp, asw, ex)]
            want = _expected(rows, key, dp.pod.uid)
        else:
            got = [r.to_dict() for r in st.undesired_pod_rows(key, dsw, asw, ex)]
            want = _expected(rows, key, None)
        # The error's "since" and retry are the same objects in both; next_retry rounding too.
        assert got == want, key
        checked += len(got)
    return checked


@pytest.fixture
def executor():
    ex = OperationExecutor(max_workers=1)
    yield ex
    ex.shutdown()


def test_per_pod_rows_equal_the_filtered_status_rows_through_a_random_history(executor):
    rnd = random.Random(16)
    dsw, asw = DesiredStateOfWorld(), ActualStateOfWorld()
    keys: set[str] = set()
    pods: dict[str, DesiredPod] = {}
    for i in range(120):
        pod = PodRef(f"uid-{i}", "ns", f"pod-{i}")
        vols = [_vtm(pod, f"v{j}") for j in range(rnd.randint(0, 4))]
        if i % 10 == 0:
            vols.append(_vtm(pod, "data", shared=f"disk-{i % 30}"))  # a staged volume shared by pods
        unresolved = (UnresolvedVolume("claim", None, "persistentvolumeclaim ns/c is missing",
                                       "persistentvolumeclaim ns/c"),) if i % 7 == 0 else ()
        dp = DesiredPod(pod, tuple(vols), unresolved, source=f"/m/pod-{i}.yaml")
        dsw.set_pod(dp)
        pods[pod.uid] = dp
        keys |= {pod.key, pod.uid}
        for v in vols:
            r = rnd.random()
            if r < 0.6:
                _mark_mounted(asw, v, uncertain=r < 0.05)
            elif r < 0.75:
                asw.record_result(v.volume_id, v.pod.uid, "SetUp", FinalError("no such thing", "E_TEST"))
            elif r < 0.85:
                asw.record_result(v.volume_id, v.pod.uid, "SetUp", WaitingError("device not there", "device /dev/x"))
    assert _check_every_pod(dsw, asw, executor, keys) > 300

    # Pods go away with their volumes still mounted (being torn down), some unmount.
    for uid in rnd.sample(sorted(pods), 40):
        dsw.remove_pod(uid)
    for uid in rnd.sample(sorted(pods), 30):
        for v in pods[uid].volumes:
            if rnd.random() < 0.5:
                asw.mark_volume_unmounted(v.volume_id, uid)
                if v.device_mountable and not asw.get_volume(v.volume_id).pod_uids:
                    asw.mark_device_unmounted(v.volume_id)
    # A pod recreated under the same name with a new UID, the old UID's mounts still there.
    old = pods["uid-3"]
    new_pod = PodRef("uid-3b", "ns", "pod-3")
    dsw.remove_pod("uid-3")
    dsw.set_pod(DesiredPod(new_pod, (_vtm(new_pod, "v0"),)))
    keys |= {"uid-3b", "ns/does-not-exist", "nope"}
    assert any(v for v in old.volumes)
    assert _check_every_pod(dsw, asw, executor, keys) > 200

    # After a restart the actual state knows a pod only from the disk (by its UID and the name
    # found there); a second sight of the same UID under another name re-keys it.
    ghost = PodRef("uid-ghost", "", "uid-ghost")
    spec = VolumeSpec(name="g", plugin_name=PLUGIN, source=None)
    asw.add_reconstructed(MountedVolume(f"{PLUGIN}/uid-ghost-g", ghost, "g", spec, PLUGIN, "/p/uid-ghost/g",
                                       VolumeMountState.UNCERTAIN), DeviceMountState.NOT_MOUNTED, None)
    keys |= {"uid-ghost", ghost.key}
    assert _check_every_pod(dsw, asw, executor, keys) > 200
    renamed = PodRef("uid-ghost", "ns", "ghost")
    asw.mark_volume_mounted(MarkVolumeOpts(f"{PLUGIN}/uid-ghost-g", renamed, "g", spec, PLUGIN, "/p/uid-ghost/g",
                                           False))
    assert [mv.pod.key for mv in asw.mounted_volumes_of_pod("ns/ghost")] == ["ns/ghost"]
    assert asw.mounted_volumes_of_pod(ghost.key) == []
    keys.add("ns/ghost")
    assert _check_every_pod(dsw, asw, executor, keys) > 200


def test_the_per_pod_index_empties_when_every_volume_is_unmounted(executor):
    dsw, asw = DesiredStateOfWorld(), ActualStateOfWorld()
    pod = PodRef("u1", "ns", "a")
    vols = [_vtm(pod, "x"), _vtm(pod, "y"), _vtm(pod, "d", shared="disk")]
    for v in vols:
        _mark_mounted(asw, v)
    assert sorted(mv.outer_name for mv in asw.mounted_volumes_of_pod("ns/a")) == ["d", "x", "y"]
    assert sorted(mv.outer_name for mv in asw.mounted_volumes_of_pod("u1")) == ["d", "x", "y"]
    assert [r.volume for r in st.undesired_pod_rows("ns/a", dsw, asw, executor)] == ["d", "x", "y"]
    for v in vols:
        asw.mark_volume_unmounted(v.volume_id, "u1")
    assert asw.mounted_volumes_of_pod("ns/a") == [] and asw.mounted_volumes_of_pod("u1") == []
    assert asw._vids_by_uid == {} and asw._uids_by_key == {}


def test_forgetting_a_volume_forgets_only_its_results():
    """``forget_volume_results`` (a pass over a volume that is gone) goes by the volume's own
    result keys, not over every result; the other volumes' results stay."""
    asw = ActualStateOfWorld()
    for vid in ("a", "b"):
        for pod_uid in (None, "u1", "u2"):
            asw.record_result(vid, pod_uid, "SetUp", FinalError("broken", "E_TEST"))
    asw.forget_volume_results("a")
    assert all(asw.result("a", uid) is None for uid in (None, "u1", "u2"))
    assert all(asw.result("b", uid).error.code == "E_TEST" for uid in (None, "u1", "u2"))
    asw.forget_volume_results("a")  # again: nothing left, nothing fails
    asw.record_result("a", "u3", "SetUp", None)
    assert asw.result("a", "u3") is not None


def test_pod_of_uid_answers_from_the_index():
    asw = ActualStateOfWorld()
    pod = PodRef("u1", "ns", "a")
    _mark_mounted(asw, _vtm(pod, "x"))
    _mark_mounted(asw, _vtm(pod, "y"), uncertain=True)
    assert asw.pod_of_uid("u1") == pod and asw.pod_of_uid("u2") is None
    asw.mark_volume_unmounted(f"{PLUGIN}/u1-x", "u1")
    assert asw.pod_of_uid("u1") == pod  # the uncertain one may still be mounted
    asw.mark_volume_unmounted(f"{PLUGIN}/u1-y", "u1")
    assert asw.pod_of_uid("u1") is None
