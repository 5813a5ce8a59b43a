"""Hostile input: whatever is in a manifest file, the loader returns objects or errors, never
raises, and nothing it accepts can name a path outside where it belongs."""

from __future__ import annotations

import copy
import json
import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from volumemanager.manifests import names
from volumemanager.manifests.documents import path_problem
from volumemanager.manifests.loader import load_bytes
from volumemanager.manifests.models import (
    ConfigMapVolumeSource,
    CSISource,
    DownwardAPISource,
    FlexVolumeSource,
    ProjectedSource,
    SecretVolumeSource,
    ServiceAccountTokenProjection,
    HostPathSource,
    LocalSource,
    ManifestError,
    PersistentVolume,
    Pod,
    Secret,
)

from .helpers import load_text

# VM_HYPOTHESIS_EXAMPLES raises the example count for a long local run.
SETTINGS = settings(max_examples=int(os.environ.get("VM_HYPOTHESIS_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

HOSTILE_NAMES = [
    "..", ".", "/", "../../etc", "a/b", "a\x00b", "\x00", "a\nb", "a\tb", "\x1b[31m", "x" * 254,
    "é" * 200, "", " ", "a b", "-a", "A", "a\u202eb", "\ud800",
]

# Values of every YAML/JSON type, nested a little, to put where a field is expected.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.sampled_from(HOSTILE_NAMES),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

BASE_DOCS = [
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "demo", "uid": "u1"},
     "spec": {"volumes": [
         {"name": "a", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
         {"name": "b", "hostPath": {"path": "/srv", "type": "Directory"}},
         {"name": "c", "nfs": {"server": "s", "path": "/e", "readOnly": True}},
         {"name": "d", "persistentVolumeClaim": {"claimName": "data", "readOnly": False}},
         {"name": "e", "csi": {"driver": "d.example.com", "fsType": "ext4", "readOnly": True,
                               "volumeAttributes": {"k": "v"}, "nodePublishSecretRef": {"name": "s"}}},
     ]}},
    {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv1"},
     "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "volumeMode": "Block",
              "mountOptions": ["noatime"], "claimRef": {"namespace": "demo", "name": "data"},
              "csi": {"driver": "d.example.com", "volumeHandle": "h", "volumeAttributes": {"a": "b"},
                      "nodeStageSecretRef": {"name": "s", "namespace": "demo"}}}},
    {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv2"},
     "spec": {"local": {"path": "/dev/loop0", "fsType": "xfs"}}},
    {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": "demo"},
     "spec": {"volumeName": "pv1", "volumeMode": "Block", "accessModes": ["ReadWriteOnce"]}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "demo"},
     "type": "Opaque", "immutable": True, "data": {"k": "YQ=="}, "stringData": {"u": "v"}},
    # the kinds and sources of issues 13 and 14
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p2", "namespace": "demo", "labels": {"a": "b"}},
     "spec": {"serviceAccountName": "sa", "securityContext": {"fsGroup": 1, "fsGroupChangePolicy": "Always"},
              "containers": [{"name": "c", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}],
              "volumes": [
         {"name": "a", "configMap": {"name": "c", "items": [{"key": "k", "path": "d/k", "mode": 0o600}],
                                     "defaultMode": 0o644, "optional": True}},
         {"name": "b", "secret": {"secretName": "s", "items": [{"key": "k", "path": "k"}]}},
         {"name": "c", "downwardAPI": {"items": [
             {"path": "l", "fieldRef": {"fieldPath": "metadata.labels['a']"}},
             {"path": "m", "resourceFieldRef": {"containerName": "c", "resource": "limits.memory", "divisor": "1Mi"}}]}},
         {"name": "d", "projected": {"defaultMode": 0o440, "sources": [
             {"configMap": {"name": "c"}}, {"secret": {"name": "s", "items": [{"key": "k", "path": "s"}]}},
             {"downwardAPI": {"items": [{"path": "n", "fieldRef": {"fieldPath": "metadata.name"}}]}},
             {"serviceAccountToken": {"path": "t", "audience": "x", "expirationSeconds": 600}}]}},
         {"name": "e", "flexVolume": {"driver": "v/d", "fsType": "ext4", "secretRef": {"name": "s"},
                                      "readOnly": True, "options": {"o": "p"}}},
     ]}},
    {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv3", "annotations": {"a": "b"}},
     "spec": {"persistentVolumeReclaimPolicy": "Delete", "storageClassName": "fast",
              "flexVolume": {"driver": "d", "secretRef": {"name": "s", "namespace": "n"}, "options": {"a": "b"}}}},
    {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "c2", "uid": "u2"},
     "spec": {"storageClassName": "fast", "resources": {"requests": {"storage": "1Gi"}},
              "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "s"}}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "demo"},
     "immutable": False, "data": {"k": "v"}, "binaryData": {"b": "YQ=="}},
    {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": "fast"},
     "provisioner": "p.example.com", "parameters": {"a": "b"}, "reclaimPolicy": "Retain",
     "volumeBindingMode": "WaitForFirstConsumer", "allowVolumeExpansion": True, "mountOptions": ["ro"],
     "allowedTopologies": [{"matchLabelExpressions": [{"key": "k", "values": ["v"]}]}]},
    {"apiVersion": "storage.k8s.io/v1", "kind": "CSIDriver", "metadata": {"name": "d.example.com"},
     "spec": {"attachRequired": False, "podInfoOnMount": True, "fsGroupPolicy": "File",
              "volumeLifecycleModes": ["Ephemeral"], "requiresRepublish": True,
              "tokenRequests": [{"audience": "a", "expirationSeconds": 700}]}},
    {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshotClass", "metadata": {"name": "vsc"},
     "driver": "d.example.com", "deletionPolicy": "Delete", "parameters": {"a": "b"}},
    {"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot", "metadata": {"name": "vs", "namespace": "demo"},
     "spec": {"volumeSnapshotClassName": "vsc", "source": {"persistentVolumeClaimName": "c2"}}},
]


def _paths(value, prefix=()):
    """Every (path-to-node) in a nested doc."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _replace(doc, path, new):
    doc = copy.deepcopy(doc)
    if not path:
        return new
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return doc


def check_result(result):
    """The invariants of any load: typed output, no internal errors, safe accepted names."""
    assert isinstance(result.objects, tuple) and isinstance(result.errors, tuple)
    for error in result.errors:
        assert isinstance(error, ManifestError)
        assert "internal error" not in error.message, str(error)
        str(error), error.to_dict()
    for obj in result.objects:
        repr(obj)
        assert names.is_object_name(obj.name)
        if isinstance(obj, Pod):
            assert names.is_label(obj.namespace)
            assert names.uid_problem(obj.uid) is None
            for vol in obj.volumes:
                assert names.is_label(vol.name)
                check_source(vol.source)
        elif isinstance(obj, PersistentVolume):
            check_source(obj.source)
        elif isinstance(obj, Secret):
            assert all(names.secret_key_problem(k) is None for k in obj.data)


def check_source(source):
    if isinstance(source, (HostPathSource, LocalSource)):
        assert path_problem(source.path) is None
    if isinstance(source, CSISource):
        assert names.is_csi_driver_name(source.driver)
    if isinstance(source, FlexVolumeSource):
        assert names.flex_driver_problem(source.driver) is None
    # every file a configMap/secret/downwardAPI/projected volume writes stays inside it
    files = []
    if isinstance(source, (ConfigMapVolumeSource, SecretVolumeSource, DownwardAPISource, ProjectedSource)):
        assert 0 <= source.default_mode <= 0o777
    if isinstance(source, (ConfigMapVolumeSource, SecretVolumeSource, DownwardAPISource)):
        files.extend(source.items)
    if isinstance(source, ProjectedSource):
        for proj in source.sources:
            files.extend([proj] if isinstance(proj, ServiceAccountTokenProjection) else proj.items)
    for item in files:
        assert names.relative_path_problem(item.path) is None
        assert getattr(item, "mode", None) is None or 0 <= item.mode <= 0o777


@SETTINGS
@given(st.binary(max_size=400))
def test_random_bytes_never_crash(data):
    for name in ("f.yaml", "f.json"):
        check_result(load_bytes(data, name, json_format=name.endswith(".json")))


@SETTINGS
@given(st.lists(st.sampled_from(list("kind: Pod\n-[]{}&*!|>'\"%@`#,?.~0x/\t") + [
    "\x00", "é", "---\n", "metadata", "name", "volumes", "spec", "emptyDir", "hostPath", "path",
    "kind: Pod\n", "metadata: {name: a}\n", "spec:\n  volumes:\n", "  - name: v\n", "    emptyDir: {}\n",
    "!!binary", "!!python/name:os.system", "<<: ", "&a ", "*a",
]), max_size=80).map("".join))
def test_random_yaml_like_text_never_crashes(text):
    check_result(load_bytes(text.encode("utf-8", "surrogatepass"), "f.yaml"))


@SETTINGS
@given(st.data())
def test_any_value_in_any_field_is_either_accepted_safely_or_reported(data):
    base = data.draw(st.sampled_from(BASE_DOCS))
    path = data.draw(st.sampled_from(list(_paths(base))))
    new = data.draw(json_values)
    doc = _replace(base, path, new)
    for text, name in ((yaml.safe_dump_all([doc, base]), "f.yaml"), (json.dumps(doc), "f.json")):
        result = load_bytes(text.encode(), name, json_format=name.endswith(".json"))
        check_result(result)
        if name == "f.yaml" and not result.parse_failed:
            # the untouched second document is always accepted, whatever the first held
            assert any(o.origin.document == 2 for o in result.objects), [str(e) for e in result.errors]


@pytest.mark.parametrize("bad", [n for n in HOSTILE_NAMES if n != "A"])  # "A": a valid UID/driver
@pytest.mark.parametrize(
    "template",
    [
        "kind: Pod\nmetadata: {{name: {v}}}\n",
        "kind: Pod\nmetadata: {{name: a, namespace: {v}}}\n",
        "kind: Pod\nmetadata: {{name: a, uid: {v}}}\n",
        "kind: Pod\nmetadata: {{name: a}}\nspec: {{volumes: [{{name: {v}, emptyDir: {{}}}}]}}\n",
        "kind: Pod\nmetadata: {{name: a}}\nspec: {{volumes: [{{name: x, persistentVolumeClaim: {{claimName: {v}}}}}]}}\n",
        "kind: Pod\nmetadata: {{name: a}}\nspec: {{volumes: [{{name: x, csi: {{driver: {v}}}}}]}}\n",
        "kind: PersistentVolume\nmetadata: {{name: {v}}}\nspec: {{local: {{path: /a}}}}\n",
        "kind: PersistentVolumeClaim\nmetadata: {{name: c}}\nspec: {{volumeName: {v}}}\n",
    ],
)
def test_hostile_names_are_refused_with_a_clear_error(template, bad):
    def put(node):
        if node == "PLACEHOLDER":
            return bad
        if isinstance(node, dict):
            return {k: put(v) for k, v in node.items()}
        if isinstance(node, list):
            return [put(v) for v in node]
        return node

    as_json = json.dumps(put(yaml.safe_load(template.format(v="PLACEHOLDER"))))
    results = [load_bytes(as_json.encode(), "f.json", json_format=True)]
    yaml_result = load_text(template.format(v=json.dumps(bad)))
    if bad == "\ud800":
        assert yaml_result.parse_failed  # YAML itself refuses a lone surrogate
    else:
        results.append(yaml_result)
    for result in results:
        assert result.objects == ()
        assert result.errors and not result.parse_failed
        text = str(result.errors[0])
        assert "\x00" not in text and "\n" not in text and "\x1b" not in text
        message = result.errors[0].message
        assert any(fragment in message for fragment in ("must", "may not", "required")), message


def test_billion_laughs_stays_small():
    text = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        text += f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
    text += "kind: Pod\nmetadata: {name: p}\nspec: {volumes: *i}\n"
    result = load_text(text)
    check_result(result)
    assert result.objects == () and 1 <= len(result.errors) <= 25


def test_deep_nesting_is_a_file_error():
    result = load_bytes(b"[" * 100_000, "f.yaml")
    assert result.parse_failed
    result = load_bytes(b"[" * 100_000, "f.json", json_format=True)
    assert result.parse_failed


def test_recursive_yaml_structure():
    result = load_text("kind: Pod\nmetadata: &m {name: a, labels: *m}\nspec: &s {volumes: [{name: v, emptyDir: *s}]}\n")
    check_result(result)
