"""Every shipped example manifest loads with no errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from volumemanager.manifests import EmptyDirSource, HostPathSource, ManifestStore, load_file
from volumemanager.manifests.loader import is_manifest_name

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = sorted(p for p in EXAMPLES.rglob("*") if p.is_file() and is_manifest_name(p.name))


def test_there_are_examples():
    assert (EXAMPLES / "manifests").is_dir()
    assert len(EXAMPLE_FILES) >= 2


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_example_loads_without_errors(path):
    result = load_file(str(path))
    assert result.errors == (), [str(e) for e in result.errors]
    assert result.objects


def test_examples_manifest_dir_as_a_whole():
    store = ManifestStore(str(EXAMPLES / "manifests"))
    store.rescan()
    snap = store.snapshot()
    assert snap.errors == ()
    web = snap.pod_by_key("demo/web")
    assert web is not None
    sources = {v.name: v.source for v in web.volumes}
    assert EmptyDirSource("Memory", 64 * 1024 * 1024) in sources.values()
    assert EmptyDirSource("", None) in sources.values()
    # Nothing the demo creates outside the root dir: the hostPath must already exist.
    assert HostPathSource("/var/log", "Directory") in sources.values()
    db = snap.pod_by_key("demo/db")
    assert db is not None and db.volumes[0].source.claim_name == "data"
    # The claim waits for the PV that examples/demo-disk.sh writes; the tour shows it waiting.
    assert snap.pvcs[("demo", "data")].volume_name == "demo-disk"
    assert "demo-disk" not in snap.pvs


def test_more_examples_as_a_whole():
    store = ManifestStore(str(EXAMPLES / "more"))
    store.rescan()
    snap = store.snapshot()
    assert snap.errors == ()
    pvc = snap.pvcs[("demo", "files")]
    assert pvc.volume_name in snap.pvs
    pod = snap.pod_by_key("demo/fileserver")
    assert pod.volumes[0].source.claim_name == "files"


def test_more_examples_do_not_clash_with_the_manifest_dir():
    """examples/more/ is meant to be copied into examples/manifests/: no object in both."""
    snaps = []
    for sub in ("manifests", "more"):
        store = ManifestStore(str(EXAMPLES / sub))
        store.rescan()
        snaps.append(store.snapshot())
    a, b = snaps
    assert not set(a.pvcs) & set(b.pvcs)
    assert not set(a.pvs) & set(b.pvs)
    assert not {p.key for p in a.pods.values()} & {p.key for p in b.pods.values()}
