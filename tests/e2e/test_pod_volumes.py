"""configMap, secret, downwardAPI and projected volumes with the real daemon (issue 13, items 2
and 5): the files, modes and ..data layout a pod sees; updates that follow the ConfigMap within
a second and never show a reader a mixed set; a removed key's file goes; secrets on tmpfs and
never in the log; a missing object waits with its reason; a restart remounts nothing."""

from __future__ import annotations

import base64
import multiprocessing
import os
import stat
import time

from tests.daemon_harness import daemon_factory, wait_until  # noqa: F401 - fixture
from tests.fixtures_mounts import require_root

SECRET_VALUE = "s3cr3t-Zq9wX-never-logged"
KEYS = [f"k{i}" for i in range(8)]
POD_UID = "7a7a7a7a-0000-4000-8000-00000000c0f1"


def configmap(version: int, keys=KEYS) -> str:
    data = "\n".join(f"  {k}: v{version}" for k in keys)
    return f"""\
apiVersion: v1
kind: ConfigMap
metadata: {{name: cfg, namespace: demo}}
data:
{data}
"""


SECRET = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: creds, namespace: demo}}
data:
  password: {base64.b64encode(SECRET_VALUE.encode()).decode()}
"""

POD = f"""\
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: demo
  uid: {POD_UID}
  labels: {{app: web}}
spec:
  volumes:
  - name: cfg
    configMap: {{name: cfg}}
  - name: creds
    secret:
      secretName: creds
      defaultMode: 0400
  - name: info
    downwardAPI:
      items:
      - path: labels
        fieldRef: {{fieldPath: metadata.labels}}
      - path: name
        fieldRef: {{fieldPath: metadata.name}}
  - name: all
    projected:
      sources:
      - configMap:
          name: cfg
          items: [{{key: k0, path: cfg/k0}}]
      - secret: {{name: creds}}
      - downwardAPI:
          items: [{{path: ns, fieldRef: {{fieldPath: metadata.namespace}}}}]
"""


def vol_dir(d, plugin: str, name: str) -> str:
    return str(d.root / "pods" / POD_UID / "volumes" / f"kubernetes.io~{plugin}" / name)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def visible(path: str) -> list[str]:
    return sorted(n for n in os.listdir(path) if not n.startswith(".."))


def fstype(path: str) -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                return line.split(" - ")[1].split()[0]
    return None


def _reader(path: str, stop, bad, reads) -> None:
    """Loop over the directory as a consistent reader does (the atomic writer's rule): resolve
    ..data, read every key of that version, and keep the result only if ..data still points
    there afterwards (else the old version may have been half deleted under us: retry).
    Count any kept set whose stamps differ or that lacks a key."""
    link = os.path.join(path, "..data")
    while not stop.is_set():
        try:
            version = os.readlink(link)
            target = os.path.join(path, version)
            names = sorted(os.listdir(target))
            values = {read(os.path.join(target, k)) for k in names}
            if os.readlink(link) != version:
                continue
        except (FileNotFoundError, NotADirectoryError):
            continue  # the version dir went between readlink and read: retry
        reads.value += 1
        if len(values) != 1 or names != KEYS:
            bad.value += 1


def test_pod_volumes_layout_updates_and_restart(daemon_factory):
    require_root()
    d = daemon_factory()
    d.write_manifest("cfg.yaml", configmap(0))
    d.write_manifest("secret.yaml", SECRET)
    d.write_manifest("pod.yaml", POD)
    wait_until(lambda: d.states("demo/web") == dict.fromkeys(["cfg", "creds", "info", "all"], "mounted"),
               20, what=f"pod volumes mounted: {d.status()}")

    cfg, creds, info, alld = (vol_dir(d, "configmap", "cfg"), vol_dir(d, "secret", "creds"),
                              vol_dir(d, "downward-api", "info"), vol_dir(d, "projected", "all"))
    # layout and modes
    assert visible(cfg) == KEYS
    assert os.readlink(os.path.join(cfg, "k0")) == "..data/k0"
    assert read(os.path.join(cfg, "k3")) == "v0"
    assert stat.S_IMODE(os.stat(os.path.join(cfg, "k0")).st_mode) == 0o644
    assert read(os.path.join(creds, "password")) == SECRET_VALUE
    assert stat.S_IMODE(os.stat(os.path.join(creds, "password")).st_mode) == 0o400
    assert fstype(creds) == "tmpfs" and fstype(alld) == "tmpfs"
    assert fstype(cfg) is None and fstype(info) is None  # plain dirs on the node's disk
    assert read(os.path.join(info, "labels")) == 'app="web"'
    assert read(os.path.join(info, "name")) == "web"
    assert visible(alld) == ["cfg", "ns", "password"]
    assert read(os.path.join(alld, "cfg/k0")) == "v0" and read(os.path.join(alld, "ns")) == "demo"

    # 20 rewrites under a reader: never a mixed set; each lands within a second
    stop, bad, reads = multiprocessing.Event(), multiprocessing.Value("i", 0), multiprocessing.Value("i", 0)
    reader = multiprocessing.Process(target=_reader, args=(cfg, stop, bad, reads))
    reader.start()
    try:
        for version in range(1, 21):
            t0 = time.monotonic()
            d.write_manifest("cfg.yaml", configmap(version))
            wait_until(lambda: read(os.path.join(cfg, "k7")) == f"v{version}", 5, 0.01,
                       f"configmap version {version} published")
            assert time.monotonic() - t0 < 1.0, f"update {version} took {time.monotonic() - t0:.2f}s"
    finally:
        stop.set()
        reader.join(10)
        if reader.is_alive():
            reader.kill()
    assert reads.value > 20 and bad.value == 0, (reads.value, bad.value)
    assert read(os.path.join(alld, "cfg/k0")) == "v20"

    # a removed key's file goes
    d.write_manifest("cfg.yaml", configmap(21, KEYS[:-1]))
    wait_until(lambda: visible(cfg) == KEYS[:-1], 5, what="removed key gone")
    assert not os.path.lexists(os.path.join(cfg, KEYS[-1]))

    # a label change rewrites the downward file
    d.write_manifest("pod.yaml", POD.replace("labels: {app: web}", "labels: {app: web, tier: front}"))
    wait_until(lambda: read(os.path.join(info, "labels")) == 'app="web"\ntier="front"', 5, what="labels updated")

    # a clean restart remounts nothing
    before = sorted((m.mount_id, m.mount_point) for m in d.mounts())
    assert len(before) == 2
    version = os.readlink(os.path.join(cfg, "..data"))
    d.stop()
    d2 = daemon_factory()
    wait_until(lambda: d2.states("demo/web") == dict.fromkeys(["cfg", "creds", "info", "all"], "mounted"),
               20, what="mounted after restart")
    time.sleep(0.5)
    assert sorted((m.mount_id, m.mount_point) for m in d2.mounts()) == before, "a restart must not remount"
    assert os.readlink(os.path.join(cfg, "..data")) == version, "unchanged content is not rewritten"

    # a ConfigMap changed while the daemon was down is published after the restart, in place
    d2.stop()
    d2.write_manifest("cfg.yaml", configmap(99))
    d3 = daemon_factory()
    wait_until(lambda: read(os.path.join(cfg, "k0")) == "v99" and read(os.path.join(alld, "cfg/k0")) == "v99", 10,
               what="content changed during the downtime published")
    assert sorted((m.mount_id, m.mount_point) for m in d3.mounts()) == before
    d2 = d3

    # the pod goes: tmpfs unmounted, disk dirs removed
    (d2.manifests / "pod.yaml").unlink()
    wait_until(lambda: not (d2.root / "pods" / POD_UID).exists(), 10, what="pod dir removed")
    assert d2.mounts() == []
    assert SECRET_VALUE not in d.log()  # one log file for every start
    assert SECRET_VALUE not in d2.cli("status", "--json").stdout
    d2.stop()


def test_missing_configmap_waits_with_reason_and_service_account_token(daemon_factory):
    require_root()
    d = daemon_factory()
    d.write_manifest("pod.yaml", f"""\
apiVersion: v1
kind: Pod
metadata: {{name: lonely, namespace: demo}}
spec:
  volumes:
  - name: cfg
    configMap: {{name: later}}
  - name: opt
    configMap: {{name: never, optional: true}}
  - name: token
    projected:
      sources:
      - serviceAccountToken: {{path: token}}
""")
    wait_until(lambda: d.states("demo/lonely").get("opt") == "mounted"
               and d.states("demo/lonely").get("cfg") == "waiting"
               and d.states("demo/lonely").get("token") == "waiting", 20, what=f"states: {d.status()}")
    explain = d.cli("explain", "demo/lonely", check=False).stdout
    assert "configmap demo/later not found: waiting for configmap demo/later" in explain
    assert "serviceAccountToken needs an API server (--kubeconfig); not available from the manifest dir" in explain
    d.write_manifest("cfg.yaml", configmap(1).replace("name: cfg", "name: later"))
    wait_until(lambda: d.states("demo/lonely").get("cfg") == "mounted", 5, what="mounted once the configmap exists")
    (d.manifests / "pod.yaml").unlink()
    wait_until(lambda: d.mounts() == [] and not any((d.root / "pods").iterdir()), 10, what="all gone")
    d.stop()
