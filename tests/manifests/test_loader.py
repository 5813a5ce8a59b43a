"""The loader: every source kind, defaults, multi-document files, and field-precise errors."""

from __future__ import annotations

import json
import os

import pytest

from operation_executor.types import SecretRef
from volumemanager.manifests import (
    CSISource,
    EmptyDirSource,
    HostPathSource,
    LocalSource,
    NFSSource,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    PVCSource,
    Secret,
    derived_pod_uid,
    is_manifest_name,
    load_file,
)
from volumemanager.manifests.loader import MAX_FILE_BYTES

from .helpers import load_text, write


def only(result, cls):
    assert result.errors == (), [str(e) for e in result.errors]
    assert len(result.objects) == 1
    obj = result.objects[0]
    assert isinstance(obj, cls)
    return obj


def only_error(result):
    assert result.objects == ()
    assert len(result.errors) == 1, [str(e) for e in result.errors]
    return result.errors[0]


# --- pods ------------------------------------------------------------------------------------

POD_ALL_SOURCES = """
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: demo
  uid: 7c9e6679-7425-40de-944b-e07fc1f90ae7
spec:
  containers: [{name: c, image: busybox}]   # ignored
  volumes:
    - name: mem
      emptyDir: {medium: Memory, sizeLimit: 64Mi}
    - name: disk
      emptyDir: {}
    - name: bare
      emptyDir:
    - name: host
      hostPath: {path: /srv/data, type: DirectoryOrCreate}
    - name: share
      nfs: {server: nfs.example.com, path: /exports/a, readOnly: true}
    - name: claim
      persistentVolumeClaim: {claimName: data, readOnly: true}
    - name: inline
      csi:
        driver: inline.csi.example.com
        fsType: ext4
        readOnly: true
        volumeAttributes: {size: "1Gi", foo: bar}
        nodePublishSecretRef: {name: creds}
"""


def test_pod_every_source_kind():
    pod = only(load_text(POD_ALL_SOURCES, "pods/web.yaml"), Pod)
    assert (pod.namespace, pod.name, pod.key) == ("demo", "web", "demo/web")
    assert pod.uid == "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    assert pod.origin.file == "pods/web.yaml" and pod.origin.document == 1
    sources = {v.name: v.source for v in pod.volumes}
    assert [v.name for v in pod.volumes] == ["mem", "disk", "bare", "host", "share", "claim", "inline"]
    assert sources["mem"] == EmptyDirSource("Memory", 64 * 1024 * 1024)
    assert sources["disk"] == EmptyDirSource("", None)
    assert sources["bare"] == EmptyDirSource("", None)
    assert sources["host"] == HostPathSource("/srv/data", "DirectoryOrCreate")
    assert sources["share"] == NFSSource("nfs.example.com", "/exports/a", True)
    assert sources["claim"] == PVCSource("data", True)
    assert sources["inline"] == CSISource(
        driver="inline.csi.example.com",
        volume_handle=None,
        fs_type="ext4",
        volume_attributes={"size": "1Gi", "foo": "bar"},
        read_only=True,
        node_publish_secret_ref=SecretRef("demo", "creds"),
    )
    assert sources["inline"].inline


def test_pod_defaults():
    pod = only(load_text("""
        kind: Pod
        metadata: {name: web}
        spec:
          volumes:
            - name: h
              hostPath: {path: /srv}
            - name: n
              nfs: {server: 10.0.0.1, path: /x}
            - name: c
              persistentVolumeClaim: {claimName: data}
            - name: i
              csi: {driver: d.example.com}
    """), Pod)
    assert pod.namespace == "default"
    assert pod.uid == derived_pod_uid("default", "web")
    assert pod.uid == derived_pod_uid("default", "web")  # stable
    assert pod.uid != derived_pod_uid("other", "web")
    src = {v.name: v.source for v in pod.volumes}
    assert src["h"] == HostPathSource("/srv", "")
    assert src["n"].read_only is False
    assert src["c"] == PVCSource("data", False)
    assert src["i"] == CSISource("d.example.com", None, None, {}, False)


def test_pod_without_volumes():
    pod = only(load_text("kind: Pod\nmetadata: {name: a}\n"), Pod)
    assert pod.volumes == ()
    pod = only(load_text("kind: Pod\nmetadata: {name: a}\nspec: {volumes: []}\n"), Pod)
    assert pod.volumes == ()


def test_derived_uid_is_the_documented_formula():
    import uuid

    assert derived_pod_uid("demo", "web") == str(uuid.uuid5(uuid.NAMESPACE_URL, "volumemanager:demo/web"))


# --- persistent volumes, claims, secrets ---------------------------------------------------

def test_pv_csi_full():
    pv = only(load_text("""
        apiVersion: v1
        kind: PersistentVolume
        metadata: {name: pv-csi}
        spec:
          capacity: {storage: 10Gi}
          accessModes: [ReadWriteOnce, ReadOnlyMany]
          volumeMode: Block
          mountOptions: [noatime, "nobarrier"]
          claimRef: {namespace: demo, name: data}
          storageClassName: ignored
          persistentVolumeReclaimPolicy: Retain
          csi:
            driver: csi.example.com
            volumeHandle: vol-0123
            fsType: xfs
            readOnly: false
            volumeAttributes: {pool: fast}
            nodeStageSecretRef: {name: stage, namespace: kube-system}
            nodePublishSecretRef: {name: pub, namespace: demo}
            nodeExpandSecretRef: {name: exp, namespace: demo}
    """), PersistentVolume)
    assert pv.name == "pv-csi"
    assert pv.volume_mode == "Block"
    assert pv.capacity_bytes == 10 * 1024**3
    assert pv.access_modes == ("ReadWriteOnce", "ReadOnlyMany")
    assert pv.mount_options == ("noatime", "nobarrier")
    assert pv.claim_ref == ("demo", "data")
    assert pv.source == CSISource(
        driver="csi.example.com",
        volume_handle="vol-0123",
        fs_type="xfs",
        volume_attributes={"pool": "fast"},
        read_only=False,
        node_stage_secret_ref=SecretRef("kube-system", "stage"),
        node_publish_secret_ref=SecretRef("demo", "pub"),
        node_expand_secret_ref=SecretRef("demo", "exp"),
    )
    assert not pv.source.inline


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("local: {path: /dev/loop7, fsType: ext4}", LocalSource("/dev/loop7", "ext4")),
        ("local: {path: /srv/vol}", LocalSource("/srv/vol", None)),
        ("hostPath: {path: /srv/h, type: Directory}", HostPathSource("/srv/h", "Directory")),
        ("nfs: {server: fs1, path: /e}", NFSSource("fs1", "/e", False)),
    ],
)
def test_pv_sources_and_defaults(spec, expected):
    pv = only(load_text(f"kind: PersistentVolume\nmetadata: {{name: pv1}}\nspec:\n  {spec}\n"), PersistentVolume)
    assert pv.source == expected
    assert pv.volume_mode == "Filesystem"
    assert pv.mount_options == ()
    assert pv.access_modes == ()
    assert pv.capacity_bytes is None
    assert pv.claim_ref is None


def test_pvc():
    pvc = only(load_text("""
        kind: PersistentVolumeClaim
        metadata: {name: data, namespace: demo}
        spec: {volumeName: pv1, volumeMode: Block, accessModes: [ReadWriteOncePod]}
    """), PersistentVolumeClaim)
    assert (pvc.namespace, pvc.name, pvc.volume_name, pvc.volume_mode) == ("demo", "data", "pv1", "Block")
    assert pvc.access_modes == ("ReadWriteOncePod",)
    pvc = only(load_text("kind: PersistentVolumeClaim\nmetadata: {name: data}\n"), PersistentVolumeClaim)
    assert (pvc.namespace, pvc.volume_name, pvc.volume_mode, pvc.access_modes) == ("default", None, None, ())


def test_secret_data_and_string_data():
    secret = only(load_text("""
        kind: Secret
        metadata: {name: creds, namespace: demo}
        type: Opaque
        data:
          password: c2VjcmV0LXZhbHVl
          both: b2xk
          empty:
        stringData:
          user: admin
          both: new
    """), Secret)
    assert secret.data == {"password": b"secret-value", "both": b"new", "empty": b"", "user": b"admin"}
    assert (secret.namespace, secret.name) == ("demo", "creds")


def test_secret_values_never_shown():
    secret = only(load_text("""
        kind: Secret
        metadata: {name: creds}
        stringData: {password: hunter2-TOPSECRET}
    """), Secret)
    for text in (repr(secret), str(secret), f"{secret}", repr([secret])):
        assert "hunter2" not in text
        assert "password" in text  # keys are fine
    bad = load_text("""
        kind: Secret
        metadata: {name: creds}
        data: {password: "hunter2-TOPSECRET!!"}
        stringData: {other: [hunter2-TOPSECRET]}
    """)
    assert bad.objects == ()
    assert len(bad.errors) == 2
    for error in bad.errors:
        assert "hunter2" not in str(error) and "hunter2" not in json.dumps(error.to_dict())
    assert bad.errors[0].field == "data[password]"
    assert "base64" in bad.errors[0].message


def test_yaml_syntax_error_does_not_quote_the_line():
    result = load_text("kind: Secret\nmetadata: {name: s}\nstringData:\n  password: hunter2: \"x\n")
    assert result.parse_failed
    (error,) = result.errors
    assert "hunter2" not in str(error)
    assert "line" in error.message and "column" in error.message


# --- multi-document files ----------------------------------------------------------------

def test_multi_document_file_with_empty_documents():
    result = load_text("""
        ---
        kind: PersistentVolumeClaim
        metadata: {name: a}
        ---
        ---
        # only a comment
        ---
        kind: Pod
        metadata: {name: b}
        ...
    """)
    assert result.errors == ()
    assert [type(o).__name__ for o in result.objects] == ["PersistentVolumeClaim", "Pod"]
    assert [o.origin.document for o in result.objects] == [1, 4]


def test_invalid_document_does_not_affect_the_others():
    result = load_text("""
        kind: Pod
        metadata: {name: a}
        ---
        kind: Pod
        metadata: {name: b}
        spec: {volumes: [{name: x, hostPath: {path: relative}}]}
        ---
        kind: Pod
        metadata: {name: c}
    """, "pods/web.yaml")
    assert [o.name for o in result.objects] == ["a", "c"]
    (error,) = result.errors
    assert str(error) == "pods/web.yaml: document 2: spec.volumes[0].hostPath.path: 'relative' must be an absolute path"
    assert error.to_dict()["document"] == 2
    assert result.failed_identities == {("Pod", "default", "b")}
    assert not result.parse_failed


# --- validation errors, one per kind of mistake -------------------------------------------

@pytest.mark.parametrize(
    "doc, field, fragment",
    [
        ("kind: Deployment\napiVersion: apps/v1\nmetadata: {name: a}", "kind", "unsupported kind 'Deployment'"),
        ("metadata: {name: a}", "kind", "required"),
        ("kind: [Pod]", "kind", "must be a string"),
        ("kind: Pod\napiVersion: v2\nmetadata: {name: a}", "apiVersion", "'v2' is not supported"),
        ("kind: Pod", "metadata", "required"),
        ("kind: Pod\nmetadata: [a]", "metadata", "must be a mapping"),
        ("kind: Pod\nmetadata: {}", "metadata.name", "required"),
        ("kind: Pod\nmetadata: {name: ../etc}", "metadata.name", "must not contain '/'"),
        ("kind: Pod\nmetadata: {name: a, namespace: Demo}", "metadata.namespace", "lower case"),
        ("kind: Pod\nmetadata: {name: a, uid: ../x}", "metadata.uid", "must not contain '/'"),
        ("kind: Pod\nmetadata: {name: a}\nspec: []", "spec", "must be a mapping"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: {a: b}}", "spec.volumes", "must be a list"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [x]}", "spec.volumes[0]", "must be a mapping"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{emptyDir: {}}]}", "spec.volumes[0].name", "required"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: A_b, emptyDir: {}}]}", "spec.volumes[0].name", "lower case"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x}]}", "spec.volumes[0]", "must specify a volume type"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, emptyDir: {}, hostPath: {path: /a}}]}", "spec.volumes[0]", "only one volume type"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, gitRepo: {repository: r}}]}", "spec.volumes[0].gitRepo", "unsupported volume type"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, emptyDir: {}}, {name: x, emptyDir: {}}]}", "spec.volumes[1].name", "duplicate volume name"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, emptyDir: {sizeLimit: 12Q}}]}", "spec.volumes[0].emptyDir.sizeLimit", "not a quantity"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, emptyDir: {sizeLimit: -1Gi}}]}", "spec.volumes[0].emptyDir.sizeLimit", "negative"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, emptyDir: {medium: HugePages}}]}", "spec.volumes[0].emptyDir.medium", "is not one of"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, emptyDir: []}]}", "spec.volumes[0].emptyDir", "must be a mapping"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, hostPath: {}}]}", "spec.volumes[0].hostPath.path", "required"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, hostPath: {path: a/b}}]}", "spec.volumes[0].hostPath.path", "must be an absolute path"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, hostPath: {path: /a/../etc}}]}", "spec.volumes[0].hostPath.path", "'..'"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, hostPath: {path: /a/./b}}]}", "spec.volumes[0].hostPath.path", "normalised"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, hostPath: {path: /a/}}]}", "spec.volumes[0].hostPath.path", "did you mean '/a'"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, hostPath: {path: //a}}]}", "spec.volumes[0].hostPath.path", "normalised"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, hostPath: {path: \"/a\\0b\"}}]}", "spec.volumes[0].hostPath.path", "NUL"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, hostPath: {path: \"/a\\nb\"}}]}", "spec.volumes[0].hostPath.path", "control"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, hostPath: {path: /a, type: Dir}}]}", "spec.volumes[0].hostPath.type", "is not one of"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, nfs: {path: /a}}]}", "spec.volumes[0].nfs.server", "required"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, nfs: {server: 'a b', path: /a}}]}", "spec.volumes[0].nfs.server", "host name"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, nfs: {server: s, path: a}}]}", "spec.volumes[0].nfs.path", "absolute"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, nfs: {server: s, path: /a, readOnly: 'yes'}}]}", "spec.volumes[0].nfs.readOnly", "true or false"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, persistentVolumeClaim: {}}]}", "spec.volumes[0].persistentVolumeClaim.claimName", "required"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, persistentVolumeClaim: {claimName: ../c}}]}", "spec.volumes[0].persistentVolumeClaim.claimName", "'/'"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, csi: {}}]}", "spec.volumes[0].csi.driver", "required"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, csi: {driver: a/b}}]}", "spec.volumes[0].csi.driver", "'/'"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, csi: {driver: d, volumeAttributes: {size: 1}}}]}", "spec.volumes[0].csi.volumeAttributes[size]", "must be a string"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, csi: {driver: d, fsType: 'ext4 -o x'}}]}", "spec.volumes[0].csi.fsType", "filesystem type"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, csi: {driver: d, nodePublishSecretRef: {}}}]}", "spec.volumes[0].csi.nodePublishSecretRef.name", "required"),
        ("kind: PersistentVolume\nmetadata: {name: p}", "spec", "required"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {capacity: {storage: 1Gi}}", "spec", "must specify a volume type"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {iscsi: {}}", "spec.iscsi", "unsupported volume type"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /a}, nfs: {server: s, path: /a}}", "spec", "only one volume type"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: x}}", "spec.local.path", "absolute"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /a}, volumeMode: block}", "spec.volumeMode", "is not one of"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /a}, capacity: {storage: lots}}", "spec.capacity.storage", "not a quantity"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /a}, accessModes: [RWO]}", "spec.accessModes[0]", "is not one of"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /a}, mountOptions: noatime}", "spec.mountOptions", "must be a list"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /a}, claimRef: {namespace: d}}", "spec.claimRef.name", "required"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {csi: {driver: d}}", "spec.csi.volumeHandle", "required"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {csi: {driver: d, volumeHandle: h, nodeStageSecretRef: {name: s}}}", "spec.csi.nodeStageSecretRef.namespace", "required"),
        ("kind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {volumeName: ../pv}", "spec.volumeName", "'/'"),
        ("kind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {volumeMode: Raw}", "spec.volumeMode", "is not one of"),
        ("kind: Secret\nmetadata: {name: s}\ndata: {../k: YQ==}", "data[../k]", "must not contain '/'"),
        ("kind: Secret\nmetadata: {name: s}\ndata: {'a b': YQ==}", "data[a b]", "'-', '_' or '.'"),
        ("kind: Secret\nmetadata: {name: s}\ndata: {\"a\\x01\": YQ==}", "data['a\\x01']", "control"),
        ("kind: Secret\nmetadata: {name: s}\nstringData: {k: 5}", "stringData[k]", "must be a string"),
        ("kind: Secret\nmetadata: {name: s}\ndata: [a]", "data", "must be a mapping"),
    ],
)
def test_each_validation_error_names_file_document_and_field(doc, field, fragment):
    result = load_text("kind: Pod\nmetadata: {name: first}\n---\n" + doc + "\n", "dir/f.yaml")
    assert [o.name for o in result.objects] == ["first"]
    assert not result.parse_failed
    assert result.errors, "expected an error"
    error = result.errors[0]
    assert error.file == "dir/f.yaml"
    assert error.document == 2
    assert error.field == field, str(error)
    assert fragment in error.message, str(error)
    assert str(error).startswith(f"dir/f.yaml: document 2: {field}: ")


def test_mount_options_are_never_shown_in_errors():
    result = load_text("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /a}, mountOptions: [\"password=hunter2\\n\"]}\n")
    (error,) = result.errors
    assert error.field == "spec.mountOptions[0]"
    assert "hunter2" not in str(error)


def test_errors_are_capped_per_document():
    volumes = "".join(f"  - {{name: v{i}, hostPath: {{path: rel}}}}\n" for i in range(100))
    result = load_text(f"kind: Pod\nmetadata: {{name: a}}\nspec:\n volumes:\n{volumes}")
    assert 1 < len(result.errors) <= 25
    assert "stopped" in result.errors[-1].message


def test_not_a_mapping_document():
    error = only_error(load_text("- just\n- a list\n"))
    assert error.document == 1 and "must be a mapping" in error.message


def test_error_identity_fields():
    result = load_text("kind: Pod\nmetadata: {name: a, namespace: ns}\nspec: {volumes: [{name: x}]}\n")
    error = only_error(result)
    assert (error.kind, error.name) == ("Pod", "ns/a")
    assert error.to_dict() == {
        "file": "test.yaml",
        "document": 1,
        "field": "spec.volumes[0]",
        "message": error.message,
        "kind": "Pod",
        "name": "ns/a",
        "text": str(error),
    }


# --- whole-file failures -------------------------------------------------------------------

def test_yaml_syntax_error_is_one_file_error():
    result = load_text("kind: Pod\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: [b\n")
    assert result.parse_failed
    error = only_error(result)
    assert error.document is None and error.field is None
    assert "YAML syntax error at line" in error.message


def test_unsafe_yaml_tags_are_refused():
    result = load_text("kind: !!python/object/apply:os.system ['true']\n")
    assert result.parse_failed


@pytest.mark.parametrize("content", [b"", b"   \n\n"])
def test_empty_file_is_a_file_error(content, tmp_path):
    path = tmp_path / "a.yaml"
    path.write_bytes(content)
    result = load_file(str(path), "a.yaml")
    assert result.parse_failed and "empty" in result.errors[0].message


def test_comment_only_file_has_no_objects_and_no_errors():
    result = load_text("# nothing here yet\n")
    assert result.objects == () and result.errors == () and not result.parse_failed


def test_not_utf8(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_bytes(b"kind: Pod\nmetadata: {name: \xff}\n")
    result = load_file(str(path))
    assert result.parse_failed and "UTF-8" in result.errors[0].message


def test_json_file(tmp_path):
    path = tmp_path / "pod.json"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j", "namespace": "demo"},
        "spec": {"volumes": [{"name": "s", "emptyDir": {"sizeLimit": "1Gi"}}]},
    }))
    pod = only(load_file(str(path), "pod.json"), Pod)
    assert pod.volumes[0].source == EmptyDirSource("", 1024**3)
    path.write_text('{"kind": "Pod",')
    result = load_file(str(path), "pod.json")
    assert result.parse_failed and "JSON syntax error at line 1" in result.errors[0].message


def test_too_big_file_is_refused(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as f:
        f.write(b"# " + b"x" * (MAX_FILE_BYTES + 10) + b"\n")
    result = load_file(str(path))
    assert result.parse_failed and "limit" in result.errors[0].message


def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "fifo.yaml"
    os.mkfifo(path)
    result = load_file(str(path))
    assert result.parse_failed and "not a regular file" in result.errors[0].message


def test_symlinks(tmp_path):
    manifests = tmp_path / "manifests"
    outside = tmp_path / "outside"
    manifests.mkdir()
    outside.mkdir()
    write(outside / "pod.yaml", "kind: Pod\nmetadata: {name: out}\n")
    write(manifests / "real.yaml", "kind: Pod\nmetadata: {name: inside}\n")
    (manifests / "link-in.yaml").symlink_to("real.yaml")
    (manifests / "link-out.yaml").symlink_to(outside / "pod.yaml")
    ok = load_file(str(manifests / "link-in.yaml"), root=str(manifests))
    assert [o.name for o in ok.objects] == ["inside"]
    bad = load_file(str(manifests / "link-out.yaml"), "link-out.yaml", root=str(manifests))
    assert bad.parse_failed and "outside the manifest dir" in bad.errors[0].message


def test_missing_file(tmp_path):
    result = load_file(str(tmp_path / "gone.yaml"))
    assert result.missing


@pytest.mark.parametrize(
    "name, ok",
    [
        ("a.yaml", True), ("a.yml", True), ("a.json", True), ("a.yaml.txt", False), ("a", False),
        (".a.yaml", False), ("a.yaml~", False), ("a.yaml.swp", False), (".a.yaml.swp", False),
        ("a.tmp", False), ("#a.yaml#", False), (".#a.yaml", False), ("a.yaml.tmp", False),
    ],
)
def test_manifest_names(name, ok):
    assert is_manifest_name(name) is ok
