"""The manifest kinds and fields of issues 13 and 14: ConfigMap, Secret type/immutable, the
configMap/secret/downwardAPI/projected/flexVolume pod volumes, the PV/PVC additions,
StorageClass, CSIDriver, VolumeSnapshotClass and VolumeSnapshot.

Each valid document becomes the typed model with Kubernetes' defaults; each invalid field is
an error naming file, document and field; ConfigMap and Secret values never appear in errors.
"""

from __future__ import annotations

import base64
from fractions import Fraction
from pathlib import Path

import pytest

from operation_executor.types import SecretRef
from volumemanager.manifests.models import (
    ConfigMap,
    ConfigMapProjection,
    ConfigMapVolumeSource,
    CSIDriver,
    DownwardAPIProjection,
    DownwardAPISource,
    FlexVolumeSource,
    KeyToPath,
    ObjectFieldSelector,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    ProjectedSource,
    ResourceFieldSelector,
    Secret,
    SecretProjection,
    SecretVolumeSource,
    ServiceAccountTokenProjection,
    StorageClass,
    TokenRequest,
    TopologySelectorTerm,
    TypedObjectReference,
    VolumeSnapshot,
    VolumeSnapshotClass,
    derived_uid,
)
from volumemanager.manifests.store import ManifestStore

from .helpers import load_text, write

SECRET_VALUE = "hunter2-s3cr3t"
B64 = base64.b64encode(SECRET_VALUE.encode()).decode()


def one(text: str):
    result = load_text(text)
    assert not result.errors, [str(e) for e in result.errors]
    assert len(result.objects) == 1
    return result.objects[0]


# --- valid documents -> models ------------------------------------------------------------


def test_configmap():
    cm = one(f"""
        apiVersion: v1
        kind: ConfigMap
        metadata: {{name: cfg, namespace: demo}}
        immutable: true
        data: {{app.conf: "{SECRET_VALUE}", empty: ""}}
        binaryData: {{blob: {B64}}}
    """)
    assert isinstance(cm, ConfigMap)
    assert (cm.namespace, cm.name, cm.immutable) == ("demo", "cfg", True)
    assert cm.data == {"app.conf": SECRET_VALUE, "empty": ""}
    assert cm.binary_data == {"blob": SECRET_VALUE.encode()}
    assert SECRET_VALUE not in repr(cm) and SECRET_VALUE not in str(cm)
    assert "app.conf" in repr(cm)


def test_secret_type_and_immutable():
    s = one(f"kind: Secret\nmetadata: {{name: s}}\ntype: kubernetes.io/tls\nimmutable: true\ndata: {{k: {B64}}}\n")
    assert isinstance(s, Secret)
    assert (s.type, s.immutable, s.data) == ("kubernetes.io/tls", True, {"k": SECRET_VALUE.encode()})
    plain = one("kind: Secret\nmetadata: {name: s}\n")
    assert (plain.type, plain.immutable) == ("Opaque", False)


POD = """
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: demo
  labels: {app: web}
  annotations: {example.com/note: hi}
spec:
  serviceAccountName: builder
  securityContext: {fsGroup: 2000, fsGroupChangePolicy: OnRootMismatch}
  initContainers:
  - name: init
  containers:
  - name: app
    image: nginx
    resources:
      requests: {cpu: 250m, memory: 64Mi, nvidia.com/gpu: 1}
      limits: {cpu: "1", memory: 128Mi, ephemeral-storage: 1Gi}
  volumes:
  - name: cfg
    configMap:
      name: app-config
      items: [{key: app.conf, path: conf/app.conf, mode: 0600}]
      defaultMode: 0440
      optional: true
  - name: sec
    secret: {secretName: creds}
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: app, fieldRef: {fieldPath: "metadata.labels['app']"}}
      - {path: note, fieldRef: {fieldPath: "metadata.annotations['example.com/note']", apiVersion: v1}}
      - {path: cpu, resourceFieldRef: {containerName: app, resource: limits.cpu, divisor: 1m}}
      - {path: mem, resourceFieldRef: {containerName: app, resource: requests.memory, divisor: 1Mi}, mode: 0400}
  - name: all
    projected:
      defaultMode: 0444
      sources:
      - configMap: {name: app-config, items: [{key: a, path: a}]}
      - secret: {name: creds, optional: true}
      - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
      - serviceAccountToken: {path: token, audience: vault, expirationSeconds: 600}
      - serviceAccountToken: {path: token2}
  - name: flex
    flexVolume:
      driver: example.com/lvm
      fsType: ext4
      secretRef: {name: flex-creds}
      readOnly: true
      options: {size: 1G, password: PWVALUE}
"""


def test_pod_with_every_new_volume_source():
    pod = one(POD)
    assert isinstance(pod, Pod)
    assert pod.labels == {"app": "web"} and pod.annotations == {"example.com/note": "hi"}
    assert (pod.fs_group, pod.fs_group_change_policy, pod.service_account_name) == (2000, "OnRootMismatch", "builder")
    assert [c.name for c in pod.containers] == ["app"] and [c.name for c in pod.init_containers] == ["init"]
    app = pod.containers[0]
    assert app.requests == {"cpu": Fraction(1, 4), "memory": 64 * 2**20}
    assert app.limits == {"cpu": 1, "memory": 128 * 2**20, "ephemeral-storage": 2**30}
    src = {v.name: v.source for v in pod.volumes}
    assert src["cfg"] == ConfigMapVolumeSource("app-config", (KeyToPath("app.conf", "conf/app.conf", 0o600),), 0o440, True)
    assert src["sec"] == SecretVolumeSource("creds", (), 0o644, False)
    info = src["info"]
    assert isinstance(info, DownwardAPISource) and info.default_mode == 0o644
    assert info.items[0].field_ref == ObjectFieldSelector("metadata.labels", "v1")
    assert info.items[2].field_ref.field_path == "metadata.annotations['example.com/note']"
    assert info.items[3].resource_field_ref == ResourceFieldSelector("app", "limits.cpu", Fraction(1, 1000))
    assert info.items[4].resource_field_ref.divisor == 2**20 and info.items[4].mode == 0o400
    proj = src["all"]
    assert isinstance(proj, ProjectedSource) and proj.default_mode == 0o444
    assert proj.sources[0] == ConfigMapProjection("app-config", (KeyToPath("a", "a", None),), False)
    assert proj.sources[1] == SecretProjection("creds", (), True)
    assert isinstance(proj.sources[2], DownwardAPIProjection)
    assert proj.sources[3] == ServiceAccountTokenProjection("token", "vault", 600)
    assert proj.sources[4] == ServiceAccountTokenProjection("token2", "", 3600)
    flex = src["flex"]
    assert flex == FlexVolumeSource("example.com/lvm", "ext4", SecretRef("demo", "flex-creds"), True, {"size": "1G", "password": "PWVALUE"})
    assert "PWVALUE" not in repr(flex) and "PWVALUE" not in repr(pod)


def test_pod_defaults():
    pod = one("kind: Pod\nmetadata: {name: p}\nspec: {volumes: [{name: d, downwardAPI: {}}, {name: c, configMap: {name: c}}]}\n")
    assert (pod.labels, pod.containers, pod.fs_group, pod.fs_group_change_policy) == ({}, (), None, None)
    assert pod.service_account_name == "default"
    assert pod.volumes[0].source == DownwardAPISource((), 0o644)
    assert pod.volumes[1].source == ConfigMapVolumeSource("c", (), 0o644, False)


def test_pv_additions():
    pv = one("""
        kind: PersistentVolume
        metadata: {name: pv1, annotations: {pv.kubernetes.io/provisioned-by: x}}
        spec:
          storageClassName: fast
          persistentVolumeReclaimPolicy: Delete
          claimRef: {namespace: demo, name: data}
          flexVolume:
            driver: lvm
            secretRef: {name: s, namespace: kube-system}
            options: {vg: vg0}
    """)
    assert isinstance(pv, PersistentVolume)
    assert (pv.reclaim_policy, pv.storage_class_name, pv.claim_ref) == ("Delete", "fast", ("demo", "data"))
    assert pv.annotations == {"pv.kubernetes.io/provisioned-by": "x"}
    assert pv.source == FlexVolumeSource("lvm", None, SecretRef("kube-system", "s"), False, {"vg": "vg0"})
    plain = one("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /dev/x}}\n")
    assert (plain.reclaim_policy, plain.storage_class_name, plain.annotations) == ("Retain", "", {})


def test_pvc_additions():
    pvc = one("""
        kind: PersistentVolumeClaim
        metadata: {name: data, namespace: demo, uid: 1234-abcd, annotations: {a: b},
                   creationTimestamp: "2024-05-01T12:00:00Z"}
        spec:
          storageClassName: fast
          accessModes: [ReadWriteOnce]
          volumeMode: Filesystem
          resources: {requests: {storage: 5Gi}}
          dataSource: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap}
          dataSourceRef: {apiGroup: snapshot.storage.k8s.io, kind: VolumeSnapshot, name: snap}
    """)
    assert isinstance(pvc, PersistentVolumeClaim)
    assert (pvc.uid, pvc.storage_class_name, pvc.request_bytes) == ("1234-abcd", "fast", 5 * 2**30)
    assert pvc.data_source == pvc.data_source_ref == TypedObjectReference("snapshot.storage.k8s.io", "VolumeSnapshot", "snap")
    assert pvc.annotations == {"a": "b"} and pvc.created == 1714564800.0
    clone = one("kind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {storageClassName: '', dataSource: {kind: PersistentVolumeClaim, name: data}}\n")
    assert clone.storage_class_name == "" and clone.data_source == TypedObjectReference("", "PersistentVolumeClaim", "data")
    assert clone.uid == derived_uid("PersistentVolumeClaim", "default", "c")
    assert one("kind: PersistentVolumeClaim\nmetadata: {name: c}\n").uid == clone.uid  # stable
    assert one("kind: PersistentVolumeClaim\nmetadata: {name: c}\n").storage_class_name is None


def test_storageclass():
    sc = one("""
        apiVersion: storage.k8s.io/v1
        kind: StorageClass
        metadata: {name: fast}
        provisioner: lvm.example.com
        parameters: {vg: vg0}
        reclaimPolicy: Retain
        volumeBindingMode: WaitForFirstConsumer
        allowVolumeExpansion: true
        mountOptions: [noatime]
        allowedTopologies:
        - matchLabelExpressions: [{key: kubernetes.io/hostname, values: [node1]}]
    """)
    assert sc == StorageClass(
        "fast", "lvm.example.com", {"vg": "vg0"}, "Retain", "WaitForFirstConsumer", True, ("noatime",),
        (TopologySelectorTerm((("kubernetes.io/hostname", ("node1",)),)),), sc.origin,
    )
    local = one("kind: StorageClass\nmetadata: {name: local}\nprovisioner: kubernetes.io/no-provisioner\n")
    assert local.provisioner == "kubernetes.io/no-provisioner"
    d = one("kind: StorageClass\nmetadata: {name: d}\nprovisioner: x.example.com\n")
    assert (d.reclaim_policy, d.volume_binding_mode, d.allow_volume_expansion, d.parameters) == ("Delete", "Immediate", False, {})


def test_csidriver():
    d = one("""
        apiVersion: storage.k8s.io/v1
        kind: CSIDriver
        metadata: {name: d.example.com}
        spec:
          attachRequired: false
          podInfoOnMount: true
          fsGroupPolicy: File
          volumeLifecycleModes: [Persistent, Ephemeral]
          requiresRepublish: true
          tokenRequests: [{audience: vault, expirationSeconds: 3600}, {audience: ""}]
          storageCapacity: false
    """)
    assert d == CSIDriver("d.example.com", False, True, "File", ("Persistent", "Ephemeral"), True,
                          (TokenRequest("vault", 3600), TokenRequest("", None)), d.origin)
    dd = one("kind: CSIDriver\napiVersion: storage.k8s.io/v1\nmetadata: {name: d.example.com}\n")
    assert (dd.attach_required, dd.pod_info_on_mount, dd.fs_group_policy, dd.volume_lifecycle_modes) == (
        True, False, "ReadWriteOnceWithFSType", ("Persistent",))


def test_snapshot_kinds():
    vsc = one("apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: {name: c}\n"
              "driver: d.example.com\ndeletionPolicy: Retain\nparameters: {a: b}\n")
    assert vsc == VolumeSnapshotClass("c", "d.example.com", "Retain", {"a": "b"}, vsc.origin)
    vs = one("apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshot\nmetadata: {name: s, namespace: demo}\n"
             "spec: {volumeSnapshotClassName: c, source: {persistentVolumeClaimName: data}}\n")
    assert vs == VolumeSnapshot("demo", "s", derived_uid("VolumeSnapshot", "demo", "s"), "c", "data", vs.origin)


# --- each invalid field -> an error naming file, document and field ------------------------

P = "kind: Pod\nmetadata: {name: a}\nspec: {volumes: [{name: x, "
CM = "kind: ConfigMap\nmetadata: {name: c}\n"


@pytest.mark.parametrize(
    "doc, field, fragment",
    [
        (CM + "data: {'a b': v}", "data[a b]", "'-', '_' or '.'"),
        (CM + "data: {..: v}", "data[..]", "'.' or '..'"),
        (CM + "data: {k: 5}", "data[k]", "must be a string"),
        (CM + "data: {k: v}\nbinaryData: {k: YQ==}", "binaryData[k]", "only one of data and binaryData"),
        (CM + "binaryData: {k: '!!'}", "binaryData[k]", "not valid base64"),
        (CM + "immutable: yes please", "immutable", "true or false"),
        ("kind: Secret\nmetadata: {name: s}\ntype: [x]", "type", "must be a string"),
        (P + "configMap: {}}]}", "spec.volumes[0].configMap.name", "required"),
        (P + "configMap: {name: c, items: [{key: k, path: /etc/x}]}}]}", "spec.volumes[0].configMap.items[0].path", "relative"),
        (P + "configMap: {name: c, items: [{key: k, path: a/../../x}]}}]}", "spec.volumes[0].configMap.items[0].path", "'..'"),
        (P + "configMap: {name: c, items: [{key: k, path: ..data}]}}]}", "spec.volumes[0].configMap.items[0].path", "'..'"),
        (P + "configMap: {name: c, items: [{key: k, path: ''}]}}]}", "spec.volumes[0].configMap.items[0].path", "must not be empty"),
        (P + "configMap: {name: c, items: [{key: k, path: \"a\\0b\"}]}}]}", "spec.volumes[0].configMap.items[0].path", "NUL"),
        (P + "configMap: {name: c, items: [{key: k, path: " + "x" * 256 + "}]}}]}", "spec.volumes[0].configMap.items[0].path", "255"),
        (P + "configMap: {name: c, items: [{key: k, path: p, mode: 01000}]}}]}", "spec.volumes[0].configMap.items[0].mode", "out of range"),
        (P + "configMap: {name: c, items: [{key: 'a b', path: p}]}}]}", "spec.volumes[0].configMap.items[0].key", "'-', '_' or '.'"),
        (P + "configMap: {name: c, items: [{key: a, path: p}, {key: b, path: p}]}}]}", "spec.volumes[0].configMap.items[1].path", "duplicate path"),
        (P + "configMap: {name: c, defaultMode: -1}}]}", "spec.volumes[0].configMap.defaultMode", "out of range"),
        (P + "configMap: {name: c, defaultMode: true}}]}", "spec.volumes[0].configMap.defaultMode", "must be an integer"),
        (P + "secret: {secretName: ../x}}]}", "spec.volumes[0].secret.secretName", "must not contain '/'"),
        (P + "secret: {secretName: s, optional: 1}}]}", "spec.volumes[0].secret.optional", "true or false"),
        (P + "downwardAPI: {items: [{path: p, fieldRef: {fieldPath: spec.nodeName}}]}}]}", "spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath", "not supported in a volume"),
        (P + "downwardAPI: {items: [{path: p, fieldRef: {fieldPath: \"metadata.labels['a b']\"}}]}}]}", "spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath", "not supported"),
        (P + "downwardAPI: {items: [{path: p, fieldRef: {fieldPath: metadata.name, apiVersion: v2}}]}}]}", "spec.volumes[0].downwardAPI.items[0].fieldRef.apiVersion", "not supported"),
        (P + "downwardAPI: {items: [{path: p}]}}]}", "spec.volumes[0].downwardAPI.items[0]", "must specify fieldRef or resourceFieldRef"),
        (P + "downwardAPI: {items: [{path: p, fieldRef: {fieldPath: metadata.name}, resourceFieldRef: {containerName: c, resource: limits.cpu}}]}}]}", "spec.volumes[0].downwardAPI.items[0]", "only one of"),
        (P + "downwardAPI: {items: [{path: p, resourceFieldRef: {containerName: c, resource: limits.gpu}}]}}]}", "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.resource", "is not one of"),
        (P + "downwardAPI: {items: [{path: p, resourceFieldRef: {resource: limits.cpu}}]}}]}", "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.containerName", "required"),
        (P + "downwardAPI: {items: [{path: p, resourceFieldRef: {containerName: c, resource: limits.cpu, divisor: 1Mi}}]}}]}", "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.divisor", "not a valid divisor"),
        (P + "downwardAPI: {items: [{path: p, resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 7}}]}}]}", "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.divisor", "not a valid divisor"),
        (P + "downwardAPI: {items: [{path: p, resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 12Q}}]}}]}", "spec.volumes[0].downwardAPI.items[0].resourceFieldRef.divisor", "not a quantity"),
        (P + "downwardAPI: {items: [{path: p, resourceFieldRef: {containerName: nope, resource: limits.cpu}}]}}]}", "spec.volumes", "not a container of this pod"),
        (P + "projected: {sources: [{serviceAccountToken: {path: t, expirationSeconds: 599}}]}}]}", "spec.volumes[0].projected.sources[0].serviceAccountToken.expirationSeconds", "out of range"),
        (P + "projected: {sources: [{serviceAccountToken: {}}]}}]}", "spec.volumes[0].projected.sources[0].serviceAccountToken.path", "required"),
        (P + "projected: {sources: [{configMap: {name: c}, secret: {name: s}}]}}]}", "spec.volumes[0].projected.sources[0]", "exactly one of"),
        (P + "projected: {sources: [{clusterTrustBundle: {name: c}}]}}]}", "spec.volumes[0].projected.sources[0].clusterTrustBundle", "unsupported projection"),
        (P + "projected: {sources: [{serviceAccountToken: {path: t}}, {secret: {name: s, items: [{key: k, path: t}]}}]}}]}", "spec.volumes[0].projected.sources", "conflicting duplicate path"),
        (P + "projected: {sources: {a: b}}}]}", "spec.volumes[0].projected.sources", "must be a list"),
        (P + "flexVolume: {}}]}", "spec.volumes[0].flexVolume.driver", "required"),
        (P + "flexVolume: {driver: a/b/c}}]}", "spec.volumes[0].flexVolume.driver", "'vendor/driver'"),
        (P + "flexVolume: {driver: ../x}}]}", "spec.volumes[0].flexVolume.driver", "'vendor/driver'"),
        (P + "flexVolume: {driver: d, options: {k: 5}}}]}", "spec.volumes[0].flexVolume.options[k]", "must be a string"),
        (P + "flexVolume: {driver: d, secretRef: {name: ../s}}}]}", "spec.volumes[0].flexVolume.secretRef.name", "must not contain '/'"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {securityContext: {fsGroup: -1}}", "spec.securityContext.fsGroup", "out of range"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {securityContext: {fsGroup: '1'}}", "spec.securityContext.fsGroup", "must be an integer"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {securityContext: {fsGroupChangePolicy: Sometimes}}", "spec.securityContext.fsGroupChangePolicy", "is not one of"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {serviceAccountName: ../sa}", "spec.serviceAccountName", "must not contain '/'"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, resources: {limits: {cpu: lots}}}]}", "spec.containers[0].resources.limits.cpu", "not a quantity"),
        ("kind: Pod\nmetadata: {name: a}\nspec: {containers: {c: 1}}", "spec.containers", "must be a list"),
        ("kind: Pod\nmetadata: {name: a, labels: {a: [b]}}", "metadata.labels[a]", "must be a string"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /x}, persistentVolumeReclaimPolicy: Recycle}", "spec.persistentVolumeReclaimPolicy", "not supported"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /x}, persistentVolumeReclaimPolicy: Keep}", "spec.persistentVolumeReclaimPolicy", "is not one of"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {local: {path: /x}, storageClassName: Fast}", "spec.storageClassName", "lower case"),
        ("kind: PersistentVolume\nmetadata: {name: p}\nspec: {flexVolume: {driver: d, secretRef: {name: s}}}", "spec.flexVolume.secretRef.namespace", "required"),
        ("kind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {resources: {requests: {storage: big}}}", "spec.resources.requests.storage", "not a quantity"),
        ("kind: PersistentVolumeClaim\nmetadata: {name: c, uid: ../u}", "metadata.uid", "must not contain '/'"),
        ("kind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {dataSource: {kind: Deployment, apiGroup: apps, name: d}}", "spec.dataSource", "is not supported"),
        ("kind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {dataSource: {kind: VolumeSnapshot, name: d}}", "spec.dataSource", "is not supported"),
        ("kind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {dataSourceRef: {kind: PersistentVolumeClaim, name: d, namespace: other}}", "spec.dataSourceRef.namespace", "cross-namespace"),
        ("kind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {dataSource: {kind: PersistentVolumeClaim, name: a}, dataSourceRef: {kind: PersistentVolumeClaim, name: b}}", "spec.dataSourceRef", "must match"),
        ("kind: PersistentVolumeClaim\nmetadata: {name: c}\nspec: {dataSource: {kind: PersistentVolumeClaim}}", "spec.dataSource.name", "required"),
        ("kind: StorageClass\nmetadata: {name: s}", "provisioner", "required"),
        ("kind: StorageClass\nmetadata: {name: s}\nprovisioner: a/b/c", "provisioner", "qualified name"),
        ("kind: StorageClass\nmetadata: {name: s}\nprovisioner: \"../x\"", "provisioner", "qualified name"),
        ("kind: StorageClass\napiVersion: v1\nmetadata: {name: s}\nprovisioner: p", "apiVersion", "use storage.k8s.io/v1"),
        ("kind: StorageClass\nmetadata: {name: s}\nprovisioner: p\nreclaimPolicy: Recycle", "reclaimPolicy", "is not one of"),
        ("kind: StorageClass\nmetadata: {name: s}\nprovisioner: p\nvolumeBindingMode: Later", "volumeBindingMode", "is not one of"),
        ("kind: StorageClass\nmetadata: {name: s}\nprovisioner: p\nparameters: {a: 1}", "parameters[a]", "must be a string"),
        ("kind: StorageClass\nmetadata: {name: s}\nprovisioner: p\nallowVolumeExpansion: maybe", "allowVolumeExpansion", "true or false"),
        ("kind: StorageClass\nmetadata: {name: s}\nprovisioner: p\nallowedTopologies: {a: b}", "allowedTopologies", "must be a list"),
        ("kind: CSIDriver\nmetadata: {name: d_x}", "metadata.name", "lower case"),
        ("kind: CSIDriver\nmetadata: {name: d}\nspec: {attachRequired: 'no'}", "spec.attachRequired", "true or false"),
        ("kind: CSIDriver\nmetadata: {name: d}\nspec: {fsGroupPolicy: Some}", "spec.fsGroupPolicy", "is not one of"),
        ("kind: CSIDriver\nmetadata: {name: d}\nspec: {volumeLifecycleModes: [Forever]}", "spec.volumeLifecycleModes[0]", "is not one of"),
        ("kind: CSIDriver\nmetadata: {name: d}\nspec: {tokenRequests: [{audience: a, expirationSeconds: 10}]}", "spec.tokenRequests[0].expirationSeconds", "out of range"),
        ("kind: VolumeSnapshotClass\nmetadata: {name: c}\ndriver: d", "deletionPolicy", "required"),
        ("kind: VolumeSnapshotClass\nmetadata: {name: c}\ndriver: d\ndeletionPolicy: Keep", "deletionPolicy", "is not one of"),
        ("kind: VolumeSnapshotClass\nmetadata: {name: c}\ndeletionPolicy: Delete", "driver", "required"),
        ("kind: VolumeSnapshot\nmetadata: {name: s}", "spec", "required"),
        ("kind: VolumeSnapshot\nmetadata: {name: s}\nspec: {}", "spec.source", "required"),
        ("kind: VolumeSnapshot\nmetadata: {name: s}\nspec: {source: {volumeSnapshotContentName: c}}", "spec.source.volumeSnapshotContentName", "not supported on one host"),
        ("kind: VolumeSnapshot\nmetadata: {name: s}\nspec: {source: {persistentVolumeClaimName: ../c}}", "spec.source.persistentVolumeClaimName", "must not contain '/'"),
        ("kind: VolumeSnapshot\napiVersion: snapshot.storage.k8s.io/v1beta1\nmetadata: {name: s}\nspec: {source: {persistentVolumeClaimName: c}}", "apiVersion", "not supported"),
    ],
)
def test_each_invalid_field_is_named(doc, field, fragment):
    result = load_text("kind: Pod\nmetadata: {name: first}\n---\n" + doc + "\n", "dir/f.yaml")
    assert [o.name for o in result.objects] == ["first"]
    assert result.errors, "expected an error"
    texts = [str(e) for e in result.errors]
    matching = [e for e in result.errors if e.field == field]
    assert matching, (field, texts)
    assert any(fragment in e.message for e in matching), texts
    for e in matching:
        assert e.file == "dir/f.yaml" and e.document == 2
        assert str(e).startswith(f"dir/f.yaml: document 2: {field}: ")


def test_configmap_and_secret_values_never_in_errors():
    big = "x" * (1024 * 1024)
    docs = [
        f"kind: ConfigMap\nmetadata: {{name: c}}\ndata: {{'bad key': {SECRET_VALUE}}}\n",
        f"kind: ConfigMap\nmetadata: {{name: c}}\ndata: {{k: {SECRET_VALUE}}}\nbinaryData: {{k: {B64}}}\n",
        f"kind: ConfigMap\nmetadata: {{name: c}}\ndata: {{k: {SECRET_VALUE}{big}}}\n",
        f"kind: ConfigMap\nmetadata: {{name: c}}\nbinaryData: {{k: '{SECRET_VALUE}!'}}\n",
        f"kind: Secret\nmetadata: {{name: s}}\ndata: {{k: '{SECRET_VALUE}!'}}\n",
        f"kind: Secret\nmetadata: {{name: s}}\nstringData: {{k: {SECRET_VALUE}{big}}}\n",
        f"kind: Pod\nmetadata: {{name: p}}\nspec: {{volumes: [{{name: f, flexVolume: {{driver: d, options: {{'': {SECRET_VALUE}}}}}}}]}}\n",
        f"kind: StorageClass\nmetadata: {{name: s}}\nprovisioner: p\nparameters: {{'': {SECRET_VALUE}}}\n",
    ]
    for doc in docs:
        result = load_text(doc)
        assert result.errors and not result.objects, doc[:80]
        for e in result.errors:
            assert SECRET_VALUE not in str(e) and SECRET_VALUE not in repr(e), str(e)


def test_size_bound():
    ok = "x" * (1024 * 1024 - 10)
    assert one(f"kind: ConfigMap\nmetadata: {{name: c}}\ndata: {{k: {ok}}}\n").data["k"] == ok
    result = load_text(f"kind: ConfigMap\nmetadata: {{name: c}}\ndata: {{k: {ok}}}\nbinaryData: {{k2: {base64.b64encode(b'y' * 20).decode()}}}\n")
    assert [e.field for e in result.errors] == ["data"]
    assert "more than the 1048576 allowed" in result.errors[0].message
    result = load_text(f"kind: Secret\nmetadata: {{name: s}}\nstringData: {{k: {'z' * (1024 * 1024)}}}\n")
    assert [e.field for e in result.errors] == ["data"]


# --- the store: maps, lookups, duplicates, last good version -------------------------------

KINDS_FILE = """
kind: ConfigMap
metadata: {name: cfg, namespace: demo}
data: {k: v}
---
kind: StorageClass
metadata: {name: fast}
provisioner: lvm.example.com
---
kind: CSIDriver
metadata: {name: d.example.com}
---
kind: VolumeSnapshotClass
metadata: {name: snaps}
driver: d.example.com
deletionPolicy: Delete
---
kind: VolumeSnapshot
metadata: {name: s1, namespace: demo}
spec: {source: {persistentVolumeClaimName: data}}
"""


def test_store_maps_and_lookups(tmp_path: Path):
    write(tmp_path / "a.yaml", KINDS_FILE)
    store = ManifestStore(str(tmp_path))
    store.rescan()
    snap = store.snapshot()
    assert not snap.errors, [str(e) for e in snap.errors]
    assert snap.configmap("demo", "cfg").data == {"k": "v"}
    assert snap.storage_class("fast").provisioner == "lvm.example.com"
    assert snap.csi_driver("d.example.com").attach_required is True
    assert snap.volume_snapshot_class("snaps").deletion_policy == "Delete"
    assert snap.volume_snapshot("demo", "s1").source_pvc_name == "data"
    assert snap.configmap("default", "cfg") is None and snap.storage_class("slow") is None


def test_store_duplicates_are_reported(tmp_path: Path):
    write(tmp_path / "a.yaml", KINDS_FILE)
    write(tmp_path / "b.yaml", KINDS_FILE)
    store = ManifestStore(str(tmp_path))
    store.rescan()
    snap = store.snapshot()
    dup = [e for e in snap.errors if "duplicate" in e.message]
    assert sorted(e.kind for e in dup) == sorted(
        ["ConfigMap", "StorageClass", "CSIDriver", "VolumeSnapshotClass", "VolumeSnapshot"]
    )
    assert all(e.file == "b.yaml" for e in dup)
    assert snap.storage_class("fast").origin.file == "a.yaml"


@pytest.mark.parametrize(
    "bad, lookup",
    [
        ("kind: ConfigMap\nmetadata: {name: cfg, namespace: demo}\ndata: {k: 5}",
         lambda s: s.configmap("demo", "cfg")),
        ("kind: StorageClass\nmetadata: {name: fast}\nprovisioner: lvm.example.com\nreclaimPolicy: Never",
         lambda s: s.storage_class("fast")),
        ("kind: CSIDriver\nmetadata: {name: d.example.com}\nspec: {fsGroupPolicy: X}",
         lambda s: s.csi_driver("d.example.com")),
        ("kind: VolumeSnapshotClass\nmetadata: {name: snaps}\ndriver: d.example.com\ndeletionPolicy: X",
         lambda s: s.volume_snapshot_class("snaps")),
        ("kind: VolumeSnapshot\nmetadata: {name: s1, namespace: demo}\nspec: {source: {}}",
         lambda s: s.volume_snapshot("demo", "s1")),
    ],
)
def test_a_bad_document_keeps_its_last_good_version(tmp_path: Path, bad, lookup):
    path = tmp_path / "a.yaml"
    write(path, KINDS_FILE)
    store = ManifestStore(str(tmp_path))
    store.rescan()
    good = lookup(store.snapshot())
    assert good is not None
    docs = KINDS_FILE.split("---\n")
    kind_line = bad.splitlines()[0]
    docs = [bad + "\n" if d.strip().startswith(kind_line) else d for d in docs]
    write(path, "---\n".join(docs))
    store.update_file(str(path))
    snap = store.snapshot()
    assert lookup(snap) is good
    assert any("keeping its last good version" in e.message for e in snap.errors), [str(e) for e in snap.errors]


def test_new_fields_keep_objects_hashable():
    """Pods (without CSI volumes), PVs (without CSI) and PVCs were hashable before these
    fields existed; code may keep them in sets."""
    pod = one(POD.replace("  - name: flex\n", "  - name: flex-gone\n").split("  - name: flex-gone")[0])
    pvc = one("kind: PersistentVolumeClaim\nmetadata: {name: c, annotations: {a: b}}\n")
    pv = one("kind: PersistentVolume\nmetadata: {name: p, annotations: {a: b}}\nspec: {local: {path: /dev/x}}\n")
    assert len({pod, pvc, pv}) == 3
