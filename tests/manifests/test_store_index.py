"""The store's incremental index (issue 16) against the whole-directory rebuild it replaced:
random writes, edits, broken files and removals over a few files full of duplicate names and
shared pod UIDs; after every change both must give the same snapshot."""

from __future__ import annotations

import random
from typing import Any

import pytest

from volumemanager.manifests.models import (
    KIND_POD,
    ConfigMap,
    ManifestError,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    Secret,
    object_identity,
)
from volumemanager.manifests.store import ManifestStore

pytestmark = pytest.mark.timeout(120)


class Reference:
    """The rebuild from every file that the store did before its index (kept here as the model)."""

    def __init__(self, seeds: dict[str, tuple[str, str]]) -> None:
        self.holders: dict[str, tuple[str, str]] = {}
        self.seeds = dict(seeds)

    def build(self, store: ManifestStore) -> dict[str, Any]:
        files = store._files  # noqa: SLF001 - the model reads what the store read
        tables: dict[str, dict] = {"pvs": {}, "pvcs": {}, "secrets": {}, "configmaps": {}}
        owners: dict[tuple[str, str, str], Any] = {}
        errors: list[ManifestError] = []
        candidates: dict[str, list[Pod]] = {}
        for path in sorted(files):
            state = files[path]
            errors.extend(state.errors)
            for obj in state.objects:
                ident = object_identity(obj)
                label = f"{ident[1]}/{ident[2]}" if ident[1] else ident[2]
                first = owners.get(ident)
                if first is not None:
                    errors.append(ManifestError(
                        obj.origin.file, obj.origin.document, "metadata.name",
                        f"duplicate {obj.kind} {label!r}: already defined in {first.origin}; ignored",
                        obj.kind, label))
                    continue
                if isinstance(obj, Pod):
                    candidates.setdefault(obj.uid, []).append(obj)
                elif isinstance(obj, PersistentVolume):
                    tables["pvs"][obj.name] = obj
                elif isinstance(obj, PersistentVolumeClaim):
                    tables["pvcs"][(obj.namespace, obj.name)] = obj
                elif isinstance(obj, Secret):
                    tables["secrets"][(obj.namespace, obj.name)] = obj
                elif isinstance(obj, ConfigMap):
                    tables["configmaps"][(obj.namespace, obj.name)] = obj
                owners[ident] = obj
        pods: dict[str, Pod] = {}
        holders: dict[str, tuple[str, str]] = {}
        for uid, claimants in candidates.items():
            winner = claimants[0]
            if len(claimants) > 1:
                held = self.holders.get(uid) or self.seeds.get(uid)
                winner = next((p for p in claimants if (p.namespace, p.name) == held), winner)
                for pod in claimants:
                    if pod is not winner:
                        errors.append(ManifestError(
                            pod.origin.file, pod.origin.document, "metadata.uid",
                            f"duplicate pod UID {uid!r}: already used by pod {winner.key!r} "
                            f"({winner.origin}); pod {pod.key!r} ignored", KIND_POD, pod.key))
            pods[uid] = winner
            holders[uid] = (winner.namespace, winner.name)
            self.seeds.pop(uid, None)
        self.holders = holders
        return {"pods": pods, **tables, "errors": errors}


def _doc(rng: random.Random) -> str:
    kind = rng.choice(["pod", "pod", "pod", "pv", "secret", "configmap", "claim"])
    name = f"n{rng.randrange(3)}"
    if kind == "pod":
        uid = f"u{rng.randrange(3)}"
        size = rng.choice(["1Mi", "2Mi"])  # a re-read may or may not change the object
        return (f"kind: Pod\nmetadata: {{name: {name}, uid: {uid}}}\nspec:\n  volumes:\n"
                f"  - {{name: v, emptyDir: {{sizeLimit: {size}}}}}\n")
    if kind == "pv":
        return f"kind: PersistentVolume\nmetadata: {{name: {name}}}\nspec: {{hostPath: {{path: /srv/{name}}}}}\n"
    if kind == "secret":
        return f"kind: Secret\nmetadata: {{name: {name}}}\nstringData: {{k: v{rng.randrange(2)}}}\n"
    if kind == "configmap":
        return f"kind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{k: v{rng.randrange(2)}}}\n"
    return f"kind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec: {{volumeName: pv-{name}}}\n"


def _same(store_snap, ref: dict[str, Any]) -> None:
    # Equal objects (origin included), not necessarily the same instances: a re-read that
    # changes nothing keeps the instances the index already holds.
    assert store_snap.pods == ref["pods"]
    for table in ("pvs", "pvcs", "secrets", "configmaps"):
        assert getattr(store_snap, table) == ref[table]
    assert list(store_snap.errors) == ref["errors"]


@pytest.mark.parametrize("seed", range(12))
def test_the_index_gives_the_rebuilds_snapshot_after_every_change(tmp_path, seed):
    rng = random.Random(seed)
    seeds = {"u1": ("default", "n2")} if seed % 2 else {}
    store = ManifestStore(str(tmp_path))
    store.prefer_uid_holders(seeds)
    ref = Reference(seeds)
    names = [f"f{i}.yaml" for i in range(5)]
    for _ in range(150):
        name = rng.choice(names)
        path = tmp_path / name
        action = rng.random()
        if action < 0.15:
            path.unlink(missing_ok=True)
        elif action < 0.22:
            path.write_text("kind: Pod\nmetadata: {name: [\n")  # broken: the file keeps what it held
        else:
            path.write_text("---\n".join(_doc(rng) for _ in range(rng.randrange(0, 4))) or "# nothing\n")
        if rng.random() < 0.2:
            store.rescan(force=True)
        else:
            store.update_file(str(path))
        if rng.random() < 0.7:  # sometimes two changes between snapshots, as under a burst
            _same(store.snapshot(), ref.build(store))
    _same(store.snapshot(), ref.build(store))
