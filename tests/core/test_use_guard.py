"""A DeleteVolume and a node operation on the same volume never overlap (the race the
controller crash test found: NodeStage and DeleteVolume in the same millisecond)."""

from __future__ import annotations

import threading

import pytest

from operation_executor.use_guard import VolumeBeingDeletedError, VolumeStillInUseError, VolumeUseGuard


def test_a_deletion_waits_for_no_one_and_is_refused_while_a_node_operation_uses_the_volume():
    guard = VolumeUseGuard()
    with guard.using("pvc-1"):
        with pytest.raises(VolumeStillInUseError) as info:
            with guard.deleting("pvc-1", still_used=lambda: False):
                pytest.fail("DeleteVolume ran while a mount operation held the volume")
        assert info.value.code == "VOLUME_IN_USE"
        with guard.deleting("pvc-2", still_used=lambda: False):
            pass  # another volume is not held
    with guard.deleting("pvc-1", still_used=lambda: False):
        pass


def test_the_last_look_at_the_node_is_asked_under_the_lock():
    guard = VolumeUseGuard()
    with pytest.raises(VolumeStillInUseError):
        with guard.deleting("pvc-1", still_used=lambda: True):
            pytest.fail("deleted a volume the node still has")


def test_a_node_operation_is_refused_while_the_volume_is_deleted_and_free_after():
    guard = VolumeUseGuard()
    inside = threading.Event()
    release = threading.Event()

    def delete() -> None:
        with guard.deleting("pvc-1", still_used=lambda: False):
            inside.set()
            release.wait(5)

    t = threading.Thread(target=delete)
    t.start()
    assert inside.wait(5)
    with pytest.raises(VolumeBeingDeletedError) as info:
        with guard.using("pvc-1"):
            pytest.fail("a mount operation started on a volume being deleted")
    assert info.value.code == "VOLUME_BEING_DELETED"
    with guard.using(None):
        pass  # volumes without a PV are never held back
    release.set()
    t.join(5)
    with guard.using("pvc-1"):
        pass
