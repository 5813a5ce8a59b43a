"""The controller side of CSI volumes on one host (issue 14): what external-provisioner and the
PV binder do in a cluster, done by the daemon from the same manifests, crash-safely.

* ``claims``: which claims to provision and the CreateVolume request for one (pure);
* ``decide``: the pure decision (provision / delete actions, and what each claim waits for);
* ``operations``: the steps as journaled executor operations (CreateVolume, DeleteVolume);
* ``records``: the provisioned PersistentVolumes, fsync'd under ``<root>/state/provisioned/``;
* ``overlay``: the seam to the node side, a source that adds those PVs and binds their claims;
* ``reconciler``: the loop, and the claims' ``status``/``explain``/``plan`` answers.

The Controller-service client is ``volumemanager.csi.controller_client``.
"""
