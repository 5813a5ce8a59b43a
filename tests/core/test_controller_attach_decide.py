"""The pure attach/detach decision and the attachment records (controller/attach.py)."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

from volumemanager.controller.attach import (
    ATTACH,
    ATTACHED,
    ATTACHING,
    DETACH,
    Attachment,
    AttachmentRecords,
    AttachTarget,
    decide_attach,
    hold_deletes,
    target_of,
)
from volumemanager.manifests.models import CSISource
from operation_executor.types import VolumeSpec

DRV = "csi.example.com"
ALL = frozenset({DRV})


def target(name: str = "pv1", handle: str = "h1") -> AttachTarget:
    return AttachTarget(name, DRV, handle, False)


def record(name: str = "pv1", handle: str = "h1", state: str = ATTACHED) -> Attachment:
    return Attachment(name, DRV, handle, "node1", state, publish_context={"devicePath": "/dev/loop9"})


def run(wanted=(), records=(), publish=ALL, not_required=frozenset(), in_use=frozenset(), ready=True):
    return decide_attach({t.name: t for t in wanted}, {r.name: r for r in records}, ALL, publish, not_required,
                         in_use, ready)


def test_wanted_volume_of_a_publishing_driver_is_attached_once():
    d = run(wanted=[target()])
    assert [(a.kind, a.name) for a in d.actions] == [(ATTACH, "pv1")]
    assert run(wanted=[target()], records=[record()]).actions == []


def test_no_attach_without_the_capability_or_with_attach_required_false():
    assert run(wanted=[target()], publish=frozenset()).actions == []
    assert run(wanted=[target()], not_required=ALL).actions == []


def test_an_attaching_record_is_published_again_while_wanted_and_unpublished_when_not():
    d = run(wanted=[target()], records=[record(state=ATTACHING)])
    assert [(a.kind, a.name) for a in d.actions] == [(ATTACH, "pv1")]
    assert "again" in d.actions[0].detail
    d = run(records=[record(state=ATTACHING)])
    assert [(a.kind, a.name) for a in d.actions] == [(DETACH, "pv1")]


def test_detach_waits_for_the_node_the_desired_state_and_the_driver():
    d = run(records=[record()], in_use=frozenset({(DRV, "h1")}))
    assert d.actions == [] and "stop using" in d.waiting["pv1"]
    d = run(records=[record()], in_use=frozenset({("*", "*")}))
    assert d.actions == []
    d = run(records=[record()], ready=False)
    assert d.actions == [] and "read whole" in d.waiting["pv1"]
    d = decide_attach({}, {"pv1": record()}, frozenset(), frozenset(), frozenset(), frozenset(), True)
    assert d.actions == [] and "register" in d.waiting["pv1"]


def test_a_wanted_handle_under_another_pv_name_is_not_detached():
    assert run(wanted=[target("other", "h1")], records=[record()]).actions == []


def test_delete_waits_for_the_detach():
    delete = SimpleNamespace(kind="delete", name="pv1")
    other = SimpleNamespace(kind="delete", name="pv2")
    waiting: dict[str, str] = {}
    assert hold_deletes([delete, other], waiting, {"pv1"}) == [other]
    assert "ControllerUnpublishVolume of pv1 first" in waiting["pv1"]


def test_target_of_a_csi_pv_spec():
    src = CSISource(DRV, "h1", "ext4", {"a": "b"}, False)
    spec = VolumeSpec("pv1", "kubernetes.io/csi", src, pv_name="pv1", access_modes=("ReadOnlyMany",))
    t = target_of(spec)
    assert t is not None and t.readonly and t.fs_type == "ext4" and dict(t.volume_context) == {"a": "b"}
    inline = CSISource(DRV, None, None, {}, False)
    assert target_of(VolumeSpec("v", "kubernetes.io/csi", inline)) is None


def test_records_are_written_durably_and_survive_a_reload(tmp_path):
    recs = AttachmentRecords(str(tmp_path))
    recs.write(record())
    path = tmp_path / "attachments" / "pv1.json"
    assert json.loads(path.read_text())["publish_context"] == {"devicePath": "/dev/loop9"}
    (tmp_path / "attachments" / "pv2.json.tmp").write_text("{half")
    (tmp_path / "attachments" / "bad.json").write_text("{not json")
    again = AttachmentRecords(str(tmp_path))
    again.load()
    assert again.get("pv1") == record()
    assert again.find(DRV, "h1") == record() and again.find(DRV, "h2") is None
    assert not os.path.exists(tmp_path / "attachments" / "pv2.json.tmp")
    assert (tmp_path / "attachments" / "bad.json").exists(), "an unreadable record is kept"
    again.remove("pv1")
    assert not path.exists() and again.all() == {}
