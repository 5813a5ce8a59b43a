"""The populator looks only at the pods a snapshot says changed (issue 16): after every step of
random writes and removals of pod files, a populator following the store's deltas holds the
same desired state as one that walks every pod each time."""

from __future__ import annotations

import random

import pytest

from mount_utils.mounter import FakeMounter
from volumemanager.cache.desired_state import DesiredStateOfWorld
from volumemanager.manifests.store import ManifestStore
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins import build_plugins
from volumemanager.populator import DesiredStatePopulator

pytestmark = pytest.mark.timeout(120)


class StoreSource:
    name = "test-store"
    synced = True

    def __init__(self, store: ManifestStore, strip_delta: bool = False) -> None:
        self.store = store
        self.strip_delta = strip_delta

    def snapshot(self):
        import dataclasses

        snap = self.store.snapshot()
        return dataclasses.replace(snap, pods_changed=None) if self.strip_delta else snap


def _pod(rng: random.Random) -> str:
    name, uid = f"p{rng.randrange(6)}", f"u{rng.randrange(5)}"
    vols = "".join(f"  - {{name: v{k}, emptyDir: {{sizeLimit: {rng.choice(['1Mi', '2Mi'])}}}}}\n"
                   for k in range(rng.randrange(1, 3)))
    return f"kind: Pod\nmetadata: {{name: {name}, uid: {uid}}}\nspec:\n  volumes:\n{vols}"


def _state(dsw: DesiredStateOfWorld) -> dict:
    return {p.pod.uid: (p.pod.key, sorted((v.volume_id, v.outer_name) for v in p.volumes)) for p in dsw.pods()}


@pytest.mark.parametrize("seed", range(8))
def test_following_deltas_gives_the_same_desired_state_as_walking_every_pod(tmp_path, seed):
    rng = random.Random(seed)
    plugins = build_plugins(DaemonPluginHost(str(tmp_path / "root"), "n", FakeMounter()))
    store = ManifestStore(str(tmp_path / "m"))
    (tmp_path / "m").mkdir()
    fast_dsw, full_dsw = DesiredStateOfWorld(), DesiredStateOfWorld()
    fast = DesiredStatePopulator(StoreSource(store), fast_dsw, plugins, lambda ids: None)
    full = DesiredStatePopulator(StoreSource(store, strip_delta=True), full_dsw, plugins, lambda ids: None)
    used_delta = 0
    for _ in range(120):
        path = tmp_path / "m" / f"f{rng.randrange(6)}.yaml"
        if rng.random() < 0.25:
            path.unlink(missing_ok=True)
        else:
            path.write_text("---\n".join(_pod(rng) for _ in range(rng.randrange(1, 3))))
        store.update_file(str(path))
        snap = store.snapshot()
        used_delta += snap.pods_changed is not None and snap.pods_changed[0] == fast._generation
        fast.sync()
        full.sync()
        assert _state(fast_dsw) == _state(full_dsw)
    assert used_delta > 100  # the deltas were followed, not ignored
