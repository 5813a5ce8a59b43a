"""Issue 14, crash safety of the controller steps: SIGKILL the daemon at random moments while
claims (Immediate and WaitForFirstConsumer, reclaim Delete) and their pods come and go on the
reference plugin in Controller mode, and on purpose while CreateVolume, DeleteVolume, NodeStage,
ControllerPublish/Unpublish (the attach case) and ControllerExpandVolume/NodeExpandVolume (an
xfs claim of a class with allowVolumeExpansion, grown twice while its pod runs: it must reach the
size with its mount never replaced) are in flight, held open by the plugin's ``sleep`` fault
knob. The daemon is restarted after every kill.

At the end everything is removed and the daemon given time to settle; then the plugin's own
records are the judge, not the daemon's status:

* created once: every CreateVolume name is ``pvc-<uid>`` of a claim we wrote, and no name is
  created again after its volume was deleted (the plugin's idempotent repeats of one name are
  allowed: its ids are derived from the name, so they can never make two volumes);
* none deleted in use: walking ``calls.log`` in order, no DeleteVolume (and no
  ControllerUnpublishVolume) of a volume while a NodeStage or NodePublish of it is not yet undone,
  and the plugin never had to refuse a DeleteVolume as in use (its stderr);
* nothing leaked: no volume, no attachment, no staged or published record in the plugin, no
  loop device backed by its images, no mount under the root dir, no claim in ``status``.

Attach is on in the ``attach`` case (the plugin with ``--attach-required``) when the daemon's
Controller client knows ControllerPublishVolume, skipped naming why otherwise; the expansion
phase runs when it knows ControllerExpandVolume and mkfs.xfs/xfs_growfs are installed.

``VM_CRASH_CONTROLLER_KILLS`` sets the number of random kills (default 24; the targeted kills come
on top); ``VM_CRASH_SEED`` replays a run. The counts are printed."""

from __future__ import annotations

import json
import os
import random
import re
import time
import uuid

import pytest

from tests.csi_loop.controller import derived_id
from tests.csi_loop.harness import plugin_factory
from tests.daemon_harness import pods_on_claim, wait_until
from tests.fixtures_mounts import require_root, require_tools

KILLS = int(os.environ.get("VM_CRASH_CONTROLLER_KILLS", "24"))
SEED = int(os.environ.get("VM_CRASH_SEED", str(random.randrange(1 << 30))))
DRIVER = "csi-loop.test"
NS = "crash"
CONVERGE_SECONDS = 45.0
# How long the plugin holds a call open for a targeted kill: long enough for the kill to land
# inside it, short enough that the restarted daemon's retry is not slowed much.
HOLD_SECONDS = 1.5
# How many claims exist at most at once (each 16 MiB of the plugin's pool).
MAX_CLAIMS = 5

pytestmark = [pytest.mark.timeout(420), pytest.mark.slow]


def daemon_has(call: str) -> bool:
    """Whether the daemon's Controller client makes ``call`` (its steps land one by one)."""
    import volumemanager.csi.controller_client as client

    with open(client.__file__) as f:
        return call in f.read()


def daemon_can_attach() -> bool:
    return daemon_has("ControllerPublishVolume")


def can_expand() -> bool:
    """Expansion needs the daemon's ControllerExpandVolume and xfs: ext4 online resize needs
    CAP_SYS_RESOURCE, missing here (see tests/e2e/test_expand.py)."""
    import shutil

    return daemon_has("ControllerExpandVolume") and all(shutil.which(t) for t in ("mkfs.xfs", "xfs_growfs"))


@pytest.fixture
def csi_loop(tmp_path):
    with plugin_factory(tmp_path / "drivers", registration_dir=tmp_path / "plugins_registry",
                        cleanup_roots=[tmp_path]) as make:
        yield make


def storage_classes() -> str:
    return "---\n".join(f"""\
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: {name}}}
provisioner: {DRIVER}
parameters:
  csi.storage.k8s.io/fstype: ext4
reclaimPolicy: Delete
volumeBindingMode: {binding}
""" for name, binding in (("imm", "Immediate"), ("wffc", "WaitForFirstConsumer"))) + f"""\
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {{name: grow}}
provisioner: {DRIVER}
parameters:
  csi.storage.k8s.io/fstype: xfs
reclaimPolicy: Delete
volumeBindingMode: Immediate
allowVolumeExpansion: true
"""


def claim_manifest(name: str, uid: str, sc: str, size: str = "16Mi") -> str:
    return f"""\
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: {name}, namespace: {NS}, uid: "{uid}"}}
spec:
  storageClassName: {sc}
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: {size}}}}}
"""


def mount_id(path: str) -> int | None:
    """The mount ID of the mount at ``path`` (a new one after any remount), None when not mounted."""
    with open("/proc/self/mountinfo") as f:
        ids = [int(line.split()[0]) for line in f if line.split()[4] == path]
    return ids[-1] if ids else None


def plugin_state(plugin) -> dict:
    try:
        return json.loads((plugin.state_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def audit_calls(calls: list[dict], claim_uids: set[str]) -> dict[str, list[str]]:
    """The plugin's call log read in order: what the daemon did that it must never do.

    Node calls are logged as they arrive and, with only ``sleep`` faults, all succeed, so a
    NodeStage/NodePublish not followed by its NodeUnstage/NodeUnpublish is still in place."""
    staged: dict[str, set[str]] = {}
    published: dict[str, set[str]] = {}
    deleted: set[str] = set()
    problems: dict[str, list[str]] = {"foreign_name": [], "recreated": [], "deleted_in_use": [],
                                      "unpublished_in_use": []}
    wanted = {f"pvc-{u}" for u in claim_uids}
    for i, c in enumerate(calls):
        m, vid = c["method"], c.get("volume_id", "")
        if m == "CreateVolume":
            name = c.get("name", "")
            if name not in wanted:
                problems["foreign_name"].append(f"#{i} {name}")
            if derived_id("vol", name) in deleted:
                problems["recreated"].append(f"#{i} {name}")
        elif m == "NodeStageVolume":
            staged.setdefault(vid, set()).add(c.get("staging_target_path", ""))
        elif m == "NodeUnstageVolume":
            staged.get(vid, set()).discard(c.get("staging_target_path", ""))
        elif m == "NodePublishVolume":
            published.setdefault(vid, set()).add(c.get("target_path", ""))
        elif m == "NodeUnpublishVolume":
            published.get(vid, set()).discard(c.get("target_path", ""))
        elif m in ("DeleteVolume", "ControllerUnpublishVolume"):
            if staged.get(vid) or published.get(vid):
                key = "deleted_in_use" if m == "DeleteVolume" else "unpublished_in_use"
                problems[key].append(f"#{i} {vid} staged={sorted(staged.get(vid, ()))} "
                                     f"published={sorted(published.get(vid, ()))}")
            if m == "DeleteVolume":
                deleted.add(vid)
    return problems


def history(calls: list[dict], problems: dict[str, list[str]]) -> str:
    """Every call of the volumes named in ``problems``, numbered as in the log, for the failure message."""
    names = {p.split()[1] for found in problems.values() for p in found}
    vids = {derived_id("vol", n) if n.startswith("pvc-") else n for n in names}
    return "\n".join(f"#{i} {c['ts']} {c['method']} {c.get('name') or c.get('volume_id')}"
                     for i, c in enumerate(calls)
                     if c.get("volume_id") in vids or derived_id("vol", c.get("name", "")) in vids)


@pytest.mark.parametrize("attach", [False, True], ids=["no-attach", "attach"])
def test_random_kills_during_controller_steps_create_once_delete_never_in_use_leak_nothing(
        daemon_factory, csi_loop, attach):
    require_root()
    require_tools("losetup", "mkfs.ext4", "blkid")
    if attach and not daemon_can_attach():
        pytest.skip("the daemon has no ControllerPublishVolume step yet (issue 14, attach)")
    rng = random.Random(SEED)
    print(f"controller crash test seed {SEED} (VM_CRASH_SEED to replay), {KILLS} random kills, attach={attach}")
    args = ["--controller", "--capacity", "1Gi"] + (["--attach-required"] if attach else [])
    plugin = csi_loop(extra_args=args)
    d = daemon_factory(start=False, extra_args=["--csi-timeout", "5"])
    d.write_manifest("sc.yaml", storage_classes())
    d.start()
    wait_until(lambda: any(x["name"] == DRIVER and x["controller_capabilities"] for x in d.status()["drivers"]),
               20, what="driver registration with its Controller service")

    claims: dict[str, tuple[str, str]] = {}  # claim name -> (uid, storage class), as written now
    pods: dict[str, str] = {}  # pod -> claim, as written now
    all_uids: set[str] = set()
    counter = {"claim": 0, "pod": 0}
    counts = {"kills": 0, "converged": 0, "claims_written": 0, "pods_written": 0}

    def add_claim(sc: str | None = None, with_pod: bool = True, size: str = "16Mi") -> str:
        counter["claim"] += 1
        name = f"c{counter['claim']}"
        uid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        sc = sc or rng.choice(["imm", "wffc"])
        claims[name] = (uid, sc)
        all_uids.add(uid)
        counts["claims_written"] += 1
        d.write_manifest(f"claim-{name}.yaml", claim_manifest(name, uid, sc, size))
        if with_pod:
            add_pod(name)
        return name

    def add_pod(claim: str) -> str:
        counter["pod"] += 1
        pod = f"p{counter['pod']}"
        pods[pod] = claim
        counts["pods_written"] += 1
        d.write_manifest(f"pod-{pod}.yaml", "---\n".join(pods_on_claim(claim, (pod,), namespace=NS)))
        return pod

    def remove_pod(pod: str) -> None:
        del pods[pod]
        (d.manifests / f"pod-{pod}.yaml").unlink()

    def remove_claim(name: str) -> None:
        for pod in [p for p, c in pods.items() if c == name]:
            remove_pod(pod)
        del claims[name]
        (d.manifests / f"claim-{name}.yaml").unlink()

    def churn() -> None:
        """One random change: a claim (with or without its pod) comes or goes, a pod comes or goes."""
        podless = [c for c in claims if c not in pods.values()]
        choices = ["add_claim"] * (len(claims) < MAX_CLAIMS) + ["remove_claim"] * bool(claims)
        choices += ["add_pod"] * bool(podless) + ["remove_pod"] * bool(pods)
        what = rng.choice(choices)
        if what == "add_claim":
            add_claim(with_pod=rng.random() < 0.7)
        elif what == "remove_claim":
            remove_claim(rng.choice(sorted(claims)))
        elif what == "add_pod":
            add_pod(rng.choice(sorted(podless)))
        else:
            remove_pod(rng.choice(sorted(pods)))

    def kill_and_restart() -> None:
        d.kill()
        counts["kills"] += 1
        d.start()

    def kill_during(method: str, trigger) -> None:
        """Hold ``method`` open in the plugin, do ``trigger``, SIGKILL once the call arrived."""
        before = len(plugin.calls(method))
        plugin.set_fault(method, sleep=HOLD_SECONDS, count=1)
        trigger()
        try:
            wait_until(lambda: len(plugin.calls(method)) > before, 30, 0.01, f"{method} sent")
        finally:
            plugin.clear_faults()
        kill_and_restart()
        counts[f"kills_during_{method}"] = counts.get(f"kills_during_{method}", 0) + 1

    def converge() -> None:
        for pod in sorted(pods):
            r = d.cli("wait", f"{NS}/{pod}", "--timeout", str(CONVERGE_SECONDS), check=False)
            assert r.returncode == 0, (f"{pod} (claim {pods[pod]}) did not converge: {r.stdout}{r.stderr}\n"
                                       f"{d.cli('explain', f'{NS}/{pod}', check=False).stdout}\n{d.log(4000)}")
        counts["converged"] += 1

    def pods_of(claim: str) -> list[str]:
        return sorted(p for p, c in pods.items() if c == claim)

    # Targeted kills first, each with the call it interrupts held open by the plugin.
    kill_during("CreateVolume", lambda: add_claim("imm", with_pod=True))
    converge()
    if attach:
        kill_during("ControllerPublishVolume", lambda: add_claim("wffc", with_pod=True))
        converge()
    kill_during("NodeStageVolume", lambda: add_claim("imm", with_pod=True))
    converge()
    victim = sorted(claims)[0]
    kill_during("DeleteVolume", lambda: remove_claim(victim))
    converge()
    if attach:
        victim = sorted(claims)[0]
        kill_during("ControllerUnpublishVolume", lambda: remove_pod([p for p, c in pods.items() if c == victim][0]))
        converge()

    if can_expand():
        # Expansion (online: the pod keeps its mount): killed during ControllerExpandVolume,
        # then during NodeExpandVolume; the volume must reach the size, its mount never replaced.
        grown = add_claim("grow", with_pod=True, size="320Mi")
        converge()
        uid = claims[grown][0]
        row = lambda: [v for v in d.status()["volumes"] if v["pod"] == f"{NS}/{pods_of(grown)[0]}"][0]  # noqa: E731
        path = row()["mount_path"]
        before = mount_id(path)
        for method, size in (("ControllerExpandVolume", 400), ("NodeExpandVolume", 480)):
            kill_during(method, lambda: d.write_manifest(f"claim-{grown}.yaml",
                                                         claim_manifest(grown, uid, "grow", f"{size}Mi")))
            wait_until(lambda: (row().get("size_bytes") or 0) >= size << 20, CONVERGE_SECONDS, 0.2,
                       f"{grown} expanded to {size}Mi in the pod (status: {row()})")
        counts["expanded_online"] = int(mount_id(path) == before)
        assert mount_id(path) == before, "online expansion replaced the pod's mount"
        converge()

    # Then random kills during churn, with a random call held open now and then.
    held = ["CreateVolume", "DeleteVolume", "NodeStageVolume", "NodeUnstageVolume"]
    if attach:
        held += ["ControllerPublishVolume", "ControllerUnpublishVolume"]
    random_kills = 0
    while random_kills < KILLS:
        if rng.random() < 0.3:
            plugin.set_fault(rng.choice(held), sleep=HOLD_SECONDS * rng.random(), count=1)
        for _ in range(rng.randint(1, 2)):
            churn()
        time.sleep(rng.uniform(0.0, 0.6))
        kill_and_restart()
        plugin.clear_faults()
        random_kills += 1
        if random_kills % 4 == 0:
            converge()

    # Finally everything goes away, and the daemon gets time to settle.
    for name in sorted(claims):
        remove_claim(name)
    cvols = lambda: plugin_state(plugin).get("controller_volumes", {})  # noqa: E731
    wait_until(lambda: d.status()["claims"] == [] and not cvols(), 60, 0.2,
               f"every claim released and its volume deleted (left: {sorted(cvols())})")
    wait_until(lambda: not d.mounts(), 20, what="nothing mounted under the root dir")
    wait_until(lambda: not plugin.loop_devices(), 20, what="no loop device backed by the plugin's images")

    calls = plugin.calls()
    problems = audit_calls(calls, all_uids)
    names = {c.get("name") for c in calls if c["method"] == "CreateVolume"}
    # The plugin refuses a DeleteVolume of a volume staged, published or attached: the daemon sent
    # one in use, even if the log order hides it (sent just before a NodeStage that won the race).
    # A refused ControllerUnpublishVolume is only counted: a call held open by the plugin when the
    # daemon was killed runs after the restart, when the new daemon may have attached and staged
    # the volume again for a new pod; the plugin refusing that stale call is right, and not the
    # new daemon's doing. (A stale DeleteVolume cannot meet this: a claim never comes back.)
    stderr = plugin.stderr_tail(100000)
    refused = re.findall(r"csi-loop: DeleteVolume -> FAILED_PRECONDITION: .*", stderr)
    counts["unpublish_refused"] = len(re.findall(r"csi-loop: ControllerUnpublishVolume -> FAILED_PRECONDITION", stderr))
    state = plugin_state(plugin)
    leftovers = {
        "volumes": sorted(state.get("controller_volumes", {})),
        "attachments": sorted(v for v, vol in state.get("controller_volumes", {}).items() if vol.get("attached")),
        "node_records": sorted(v for v, n in state.get("volumes", {}).items()
                               if n.get("staged") or n.get("published") or n.get("loop")),
        "loops": plugin.loop_devices(),
        "mounts": [m.mount_point for m in d.mounts()],
        "records": sorted(os.listdir(d.root / "state" / "provisioned"))
        if (d.root / "state" / "provisioned").exists() else [],
    }
    counts.update(volumes_created=len(names), create_calls=sum(c["method"] == "CreateVolume" for c in calls),
                  delete_calls=sum(c["method"] == "DeleteVolume" for c in calls),
                  refused_in_use=len(refused), **{k: len(v) for k, v in problems.items()},
                  **{f"leaked_{k}": len(v) for k, v in leftovers.items()})
    print("controller crash test:", ", ".join(f"{k}={v}" for k, v in counts.items()))
    if any(problems.values()):
        print(history(calls, problems))
    assert not any(problems.values()), problems
    assert not refused, refused
    assert not any(leftovers.values()), leftovers
    assert len(names) <= len(all_uids) and names, (names, all_uids)
    assert counts["kills_during_CreateVolume"] == counts["kills_during_DeleteVolume"] == 1


def test_audit_reads_a_delete_in_use_and_a_recreation_off_the_call_log():
    """The judge itself, on a literal call log: it must see what it is there to catch."""
    uid = "c0ffee00-0000-4000-8000-000000000001"
    vid = derived_id("vol", f"pvc-{uid}")
    calls = [
        {"method": "CreateVolume", "name": f"pvc-{uid}"},
        {"method": "CreateVolume", "name": f"pvc-{uid}"},  # an idempotent repeat: allowed
        {"method": "NodeStageVolume", "volume_id": vid, "staging_target_path": "/g"},
        {"method": "NodePublishVolume", "volume_id": vid, "target_path": "/t"},
        {"method": "NodeUnpublishVolume", "volume_id": vid, "target_path": "/t"},
        {"method": "DeleteVolume", "volume_id": vid},  # still staged at /g
        {"method": "NodeUnstageVolume", "volume_id": vid, "staging_target_path": "/g"},
        {"method": "DeleteVolume", "volume_id": vid},
        {"method": "CreateVolume", "name": f"pvc-{uid}"},  # after the deletion: a second volume
        {"method": "CreateVolume", "name": "pvc-someone-else"},
    ]
    problems = audit_calls(calls, {uid})
    assert [len(problems[k]) for k in ("deleted_in_use", "recreated", "foreign_name", "unpublished_in_use")] == [1, 1, 1, 0]
    assert audit_calls(calls[:5] + calls[6:8], {uid}) == {k: [] for k in problems}
