"""Prometheus metrics for the volume manager, named after the kubelet's.

Why this shape:
* prometheus-client is imported only when metrics are enabled (it costs
  ~150 ms at start-up); with `--metrics-address ""` the daemon gets a
  `NullMetrics` whose methods do nothing, so call sites never branch.
* Every `Metrics` has its own CollectorRegistry: several instances can live
  in one process (tests, a restarted reconciler) without "Duplicated
  timeseries" errors from the global registry.
* Names and labels follow the kubelet (`storage_operation_duration_seconds`
  with operation_name/volume_plugin/status, `kubelet_volume_stats_*` with
  namespace/persistentvolumeclaim), prefixed `volumemanager_`, so existing
  dashboards need only the prefix changed.
"""

from __future__ import annotations

import os
import threading
from typing import Any

# Same buckets as the kubelet's storage_operation_duration_seconds: mount
# and CSI operations range from milliseconds to the multi-minute timeouts.
OPERATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 25.0, 50.0, 120.0, 300.0, 600.0)
# A reconcile pass is normally milliseconds; seconds mean something blocks.
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

VOLUME_STATES = ("mounted", "pending", "waiting", "error", "uncertain", "unmounting")
OPERATION_RESULTS = ("success", "error", "uncertain")

# statvfs_stats() keys -> gauge name suffix (volumemanager_volume_stats_<suffix>).
VOLUME_STATS_KEYS = (
    "capacity_bytes",
    "used_bytes",
    "available_bytes",
    "inodes",
    "inodes_used",
    "inodes_free",
)


class MetricsError(Exception):
    """Metrics could not start (bad --metrics-address, port in use)."""


def parse_address(address: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    text = address.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise MetricsError(f"--metrics-address {address!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        host = "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise MetricsError(f"--metrics-address {address!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise MetricsError(f"--metrics-address {address!r}: port {port} out of range")
    return host, port


def _split_pod(pod: str) -> tuple[str, str]:
    """`namespace/name` -> (namespace, name); a bare name is in `default`."""
    namespace, sep, name = pod.partition("/")
    if not sep:
        return "default", pod
    return namespace, name


def statvfs_stats(path: str) -> dict[str, int]:
    """Capacity/usage of the filesystem at `path`, like NodeGetVolumeStats."""
    from volumemanager.bounded_io import stats_from_statvfs

    return stats_from_statvfs(os.statvfs(path))


class NullMetrics:
    """Metrics disabled: the same methods, doing nothing."""

    enabled = False
    port: int | None = None
    address: str | None = None

    @classmethod
    def start(cls, address: str) -> "Metrics | NullMetrics":
        return start_metrics(address)

    def observe_operation(self, operation: str, plugin: str, result: str, seconds: float) -> None:
        pass

    def set_volume_states(self, counts: dict[tuple[str, str], int]) -> None:
        pass

    def observe_reconcile(self, seconds: float) -> None:
        pass

    def observe_csi_call(self, driver: str, method: str, code: str, seconds: float) -> None:
        pass

    def set_volume_stats(self, pod: str, volume: str, stats: dict[str, int]) -> None:
        pass

    def observe_fs_group(self, plugin: str, walked: bool, seconds: float) -> None:
        pass

    def forget_volume_stats(self, pod: str, volume: str) -> None:
        pass

    def render(self) -> bytes:
        return b""

    def stop(self) -> None:
        pass


class Metrics(NullMetrics):
    """The real metrics, with a private registry and an optional HTTP server.

    `Metrics()` only builds the collectors (use `render()` to see them);
    `Metrics.start("127.0.0.1:9469")` also serves `/metrics`, and returns a
    `NullMetrics` for an empty address.
    """

    enabled = True

    def __init__(self) -> None:
        import prometheus_client as prom  # lazy: only when metrics are on

        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self._op_duration = prom.Histogram(
            "volumemanager_storage_operation_duration_seconds",
            "Duration of storage operations (mount, unmount, stage, publish, expand...)",
            ["operation_name", "volume_plugin", "status"],
            buckets=OPERATION_BUCKETS,
            registry=r,
        )
        self._op_total = prom.Counter(
            "volumemanager_storage_operations",  # exposed as ..._total
            "Number of storage operations by result",
            ["operation_name", "volume_plugin", "status"],
            registry=r,
        )
        self._volumes = prom.Gauge(
            "volumemanager_volumes",
            "Volumes by desired (in a manifest) and state",
            ["desired", "state"],
            registry=r,
        )
        self._reconcile = prom.Histogram(
            "volumemanager_reconciler_pass_duration_seconds",
            "Duration of one reconciler pass",
            buckets=RECONCILE_BUCKETS,
            registry=r,
        )
        # Walks only (a skipped walk is not observed): how long users wait for fsGroup.
        self._fs_group_walk = prom.Histogram(
            "volumemanager_fsgroup_walk_seconds",
            "Duration of the fsGroup ownership walk of a volume after SetUp",
            ["volume_plugin"],
            buckets=OPERATION_BUCKETS,
            registry=r,
        )
        self._fs_group_skipped = prom.Counter(
            "volumemanager_fsgroup_walks_skipped",  # exposed as ..._total
            "fsGroup applications without a walk (OnRootMismatch with a right root, read-only, delegated to the driver, not supported)",
            ["volume_plugin"],
            registry=r,
        )
        self._stats = {
            key: prom.Gauge(
                f"volumemanager_volume_stats_{key}",
                f"Volume filesystem statistics: {key.replace('_', ' ')}",
                ["namespace", "pod", "volume"],
                registry=r,
            )
            for key in VOLUME_STATS_KEYS
        }
        self._state_keys: set[tuple[str, str]] = {
            (desired, state) for desired in ("true", "false") for state in VOLUME_STATES
        }
        for desired, state in self._state_keys:
            self._volumes.labels(desired=desired, state=state).set(0)
        self._lock = threading.Lock()
        self._csi_ops = prom.Histogram(
            "volumemanager_csi_sidecar_operations_seconds",
            "Duration of CSI Controller calls (provision, delete...), as the CSI sidecars' "
            "csi_sidecar_operations_seconds",
            ["driver_name", "method_name", "grpc_status_code"],
            buckets=OPERATION_BUCKETS,
            registry=r,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @classmethod
    def start(cls, address: str) -> "Metrics | NullMetrics":
        """Serve /metrics on `address`; an empty address disables metrics."""
        return start_metrics(address)

    def serve(self, address: str) -> None:
        """Start the HTTP server (port 0 picks a free port: see `.port`)."""
        host, port = parse_address(address)
        try:
            server, thread = self._prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"--metrics-address {address!r}: cannot listen: {exc.strerror or exc}") from exc
        self._server, self._thread = server, thread
        self.port = server.server_address[1]
        self.address = f"{host}:{self.port}" if ":" not in host else f"[{host}]:{self.port}"

    def stop(self) -> None:
        """Stop the HTTP server (idempotent)."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def render(self) -> bytes:
        """The exposition text, as a scrape would return it."""
        return self._prom.generate_latest(self.registry)

    # -- recording ---------------------------------------------------------

    def observe_operation(self, operation: str, plugin: str, result: str, seconds: float) -> None:
        labels = {"operation_name": operation, "volume_plugin": plugin, "status": result}
        self._op_duration.labels(**labels).observe(max(0.0, seconds))
        self._op_total.labels(**labels).inc()

    def set_volume_states(self, counts: dict[tuple[str, str], int]) -> None:
        """Counts by (desired "true"/"false" or bool, state); others drop to 0."""
        normalised: dict[tuple[str, str], int] = {}
        for (desired, state), count in counts.items():
            key = (_bool_label(desired), state)
            normalised[key] = normalised.get(key, 0) + int(count)
        with self._lock:
            self._state_keys |= set(normalised)
            for key in self._state_keys:
                self._volumes.labels(desired=key[0], state=key[1]).set(normalised.get(key, 0))

    def observe_reconcile(self, seconds: float) -> None:
        self._reconcile.observe(max(0.0, seconds))

    def observe_csi_call(self, driver: str, method: str, code: str, seconds: float) -> None:
        """One CSI Controller call, labelled as the CSI sidecars do (csi-lib-utils metrics):
        method_name is the full gRPC method, grpc_status_code the status name."""
        self._csi_ops.labels(driver_name=driver, method_name=f"/csi.v1.Controller/{method}"
                             if method.startswith(("Create", "Delete", "Controller", "List", "Validate", "GetCapacity"))
                             else f"/csi.v1.Identity/{method}", grpc_status_code=code).observe(max(0.0, seconds))

    def set_volume_stats(self, pod: str, volume: str, stats: dict[str, int]) -> None:
        namespace, name = _split_pod(pod)
        for key, gauge in self._stats.items():
            if key in stats and stats[key] is not None:
                gauge.labels(namespace=namespace, pod=name, volume=volume).set(stats[key])

    def observe_fs_group(self, plugin: str, walked: bool, seconds: float) -> None:
        if walked:
            self._fs_group_walk.labels(volume_plugin=plugin).observe(max(0.0, seconds))
        else:
            self._fs_group_skipped.labels(volume_plugin=plugin).inc()

    def forget_volume_stats(self, pod: str, volume: str) -> None:
        namespace, name = _split_pod(pod)
        for gauge in self._stats.values():
            try:
                gauge.remove(namespace, name, volume)
            except KeyError:
                pass


def _bool_label(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value).lower()


def start_metrics(address: str | None) -> Metrics | NullMetrics:
    """Metrics served on `address`, or `NullMetrics()` when it is empty/None.

    Raises MetricsError naming the address when it is malformed or busy.
    """
    if not address or not address.strip():
        return NullMetrics()
    parse_address(address)  # fail on a bad address before importing anything
    metrics = Metrics()
    metrics.serve(address)
    return metrics
