"""``volumemanager daemon``: run the volume manager until SIGTERM/SIGINT. Mounts stay on exit."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from volumemanager.admin_api import AdminError, AdminServer
from volumemanager.config import ConfigError, DaemonConfig, build_config

log = logging.getLogger("volumemanager.daemon")

# How often the main thread looks for a SIGHUP request or a stop; signals only set flags.
MAIN_LOOP_SECONDS = 0.5
# `wait` over the admin API is capped so a forgotten client does not hold a thread forever.
MAX_WAIT_SECONDS = 24 * 3600
# Volumes-by-state gauges are recomputed at most this often (an O(volumes) walk).
STATE_METRICS_SECONDS = 5.0


class Daemon:
    def __init__(self, cfg: DaemonConfig, source=None, metrics=None) -> None:
        from volumemanager.metrics import start_metrics
        from volumemanager.sdnotify import SystemdNotifier
        from volumemanager.sources.build import build_source
        from volumemanager.volume_manager import VolumeManager

        self.cfg = cfg
        # The flags the daemon was started with: a SIGHUP re-reads the config file under them,
        # so that flags still win (a --log-level flag is not reset by a file without one).
        self.flag_values: dict = {}
        self.notifier = SystemdNotifier()
        if metrics is None and cfg.metrics_address and cfg.metrics_address.strip():
            from volumemanager.metrics import parse_address

            parse_address(cfg.metrics_address)  # a bad value stops the start before anything is made
        os.makedirs(cfg.root_dir, mode=0o750, exist_ok=True)
        from volumemanager.root_lock import lock_root_dir

        # Before anything under the root dir is read: a second daemon on it would tear down
        # the first one's volumes as "not desired" (RootDirInUseError: exit 1).
        self._root_lock = lock_root_dir(cfg.root_dir)
        self.metrics = metrics if metrics is not None else start_metrics(cfg.metrics_address)
        self.vm = VolumeManager(cfg, source or build_source(cfg), metrics=self.metrics)
        self.vm.on_tick = self._tick
        interval = self.notifier.watchdog_interval()
        if interval:
            self.vm.reconciler.max_idle_sleep = min(self.vm.reconciler.max_idle_sleep, interval)
        self.server = AdminServer(
            cfg.socket,
            {"status": self.vm.status, "explain": self._explain, "wait": self._wait, "plan": self._plan,
             "ping": lambda: {"pid": os.getpid()},
             "drain": self._drain, "uncordon": self._uncordon},
        )
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._started_at = time.time()
        self._record_sources = [getattr(self.vm.populator.source, "name", type(self.vm.populator.source).__name__)]
        self._last_status = ""
        self._last_state_metrics = 0.0
        self._stats = None
        if getattr(self.metrics, "enabled", False):
            from volumemanager.stats_collector import VolumeStatsCollector

            self._stats = VolumeStatsCollector(self.vm.asw.mounted_volumes, self.vm.plugins, self.metrics)

    # --- admin methods --------------------------------------------------------------------

    def _explain(self, pod: str, volume: str | None = None) -> dict:
        code, body = self.vm.explain(pod, volume)
        body["exit_code"] = code
        return body

    def _wait(self, pod: str, timeout_seconds: float = 120.0) -> dict:
        timeout = max(0.0, min(float(timeout_seconds), MAX_WAIT_SECONDS))
        deadline = time.monotonic() + timeout
        if not self._pod_known(pod, deadline):
            body = self._explain(pod)  # "no pod ... in the desired state"
            body["mounted"] = False
            return body
        mounted = self.vm.wait_for_mount(pod, max(0.0, deadline - time.monotonic()))
        body = self._explain(pod)
        body["mounted"] = bool(mounted)
        # Timed out before the desired state was read whole (a failed source): "no such pod"
        # is not known, so the client reports a timeout (exit 1), not exit 2.
        body["desired_state_unknown"] = not self.vm.populator.has_added_pods
        return body

    def _pod_known(self, pod: str, deadline: float) -> bool:
        """Whether the desired state holds ``pod``, answered as soon as that can be known.

        "No such pod" is only true once the desired state has been read whole (before that a
        pod may simply not have been read yet), so wait for that, bounded by the caller's
        deadline. Then re-read the source once: a client that writes a manifest and at once
        waits for its pod may be faster than the file watch, and must not be told the pod does
        not exist. Returns True at the deadline when the read is still not complete: the
        caller's wait then times out as it always did."""
        if self.vm.dsw.find_pod(pod) is not None:
            return True
        while not self.vm.populator.has_added_pods:
            if time.monotonic() >= deadline or self._stop.is_set():
                return True
            time.sleep(0.05)
            if self.vm.dsw.find_pod(pod) is not None:
                return True
        try:
            self.vm.populator.source.resync()
            self.vm.populator.sync()
        except Exception:  # noqa: BLE001 - a failed re-read leaves the state as it was read
            log.warning("wait %s: re-reading the desired state failed", pod, exc_info=True)
        return self.vm.dsw.find_pod(pod) is not None

    def _plan(self) -> list[dict]:
        return self.vm.plan()

    def _drain(self, dry_run: bool = False) -> dict:
        """Stop mounting and tear every volume down (progress: ``status``'s ``drained``)."""
        result = self.vm.drain.drain(dry_run=bool(dry_run))
        if not dry_run and not result["already_drained"]:
            log.info("node drained: tearing down %d volumes; not mounting until uncordon or restart",
                     result["volumes"])
        return result

    def _uncordon(self) -> dict:
        result = self.vm.drain.uncordon()
        if result["was_drained"]:
            log.info("node uncordoned: mounting again")
        return result

    # --- loop -----------------------------------------------------------------------------

    def _tick(self) -> None:
        """Runs on the reconciler's thread after each wake-up: a wedged reconciler stops pinging."""
        self.notifier.watchdog_ping_if_due()
        now = time.monotonic()
        if self._stats is not None and now - self._last_state_metrics >= STATE_METRICS_SECONDS:
            self._last_state_metrics = now
            counts: dict[tuple[str, str], int] = {}
            for r in self.vm.rows():
                k = ("true" if r.desired else "false", r.state)
                counts[k] = counts.get(k, 0) + 1
            self.metrics.set_volume_states(counts)
        text = f"{self.vm.executor.pending_count()} operations in flight; {len(self.vm.dsw)} pods desired"
        if self.vm.drain.is_drained():
            text += "; drained: not mounting"
        if text != self._last_status:
            self._last_status = text
            self.notifier.status(text)

    def request_stop(self, *_: object) -> None:
        self._stop.set()

    def request_reload(self, *_: object) -> None:
        self._reload.set()

    def _write_record(self, stopped: bool = False) -> None:
        """Record the settings this daemon runs with for ``status`` without a daemon
        (``daemon_record``). A failure is logged, never fatal: the mounts matter more."""
        from volumemanager.daemon_record import build_record, write_record

        record = build_record(self.cfg, self._record_sources, self._started_at)
        if stopped:
            record["stopped_at"] = time.time()
        try:
            path = write_record(self.cfg.root_dir, record)
        except OSError as e:
            log.error("cannot write the daemon record under %s: %s", self.cfg.root_dir, e)
            return
        log.debug("daemon record written to %s", path)

    def run(self) -> int:
        started = time.monotonic()
        self._write_record()
        self.server.start()
        self.vm.start()
        if self._stats is not None:
            self._stats.start()
        ready_in = time.monotonic() - started
        mounted, desired = self.vm.mount_counts()
        self.notifier.ready(f"ready: {mounted}/{desired} volumes mounted")
        log.info("ready in %.3fs: %d pods desired, socket %s", ready_in, len(self.vm.dsw), self.cfg.socket,
                 extra={"duration_ms": round(ready_in * 1000, 1)})
        while not self._stop.wait(MAIN_LOOP_SECONDS):
            if self._reload.is_set():
                self._reload.clear()
                self._do_reload()
        self.notifier.stopping()
        log.info("stopping; mounts stay in place")
        self.server.stop()
        if self._stats is not None:
            self._stats.stop()
        self.vm.stop()
        self.metrics.stop()
        self._write_record(stopped=True)
        from volumemanager.root_lock import unlock_root_dir

        unlock_root_dir(self._root_lock)
        return 0

    def _do_reload(self) -> None:
        self.notifier.reloading()
        log.info("SIGHUP: re-reading config and manifests")
        if self.cfg.config:
            try:
                from volumemanager.logs import setup_logging

                new = build_config({**self.flag_values, "config": self.cfg.config})
                setup_logging(new.log_format, new.log_level)
                changed = [f"{n}={getattr(new, n)}" for n in ("log_format", "log_level")
                           if getattr(new, n) != getattr(self.cfg, n)]
                self.cfg.log_format, self.cfg.log_level = new.log_format, new.log_level
                log.info("SIGHUP: re-read config %s: %s (other settings need a restart)", self.cfg.config,
                         f"applied {', '.join(changed)}" if changed else "log settings unchanged")
            except (ConfigError, ValueError) as e:
                log.error("SIGHUP: %s; keeping the running config", e)
        before = self.vm.populator.snapshot
        try:
            self.vm.resync()
        except Exception:  # noqa: BLE001 - keep running on the state read before
            log.exception("SIGHUP: re-reading the manifests failed; keeping the desired state read before")
        else:
            after = self.vm.populator.snapshot
            log.info("SIGHUP: manifests re-read: %d pods (was %d), %d manifest errors (was %d)",
                     len(after.pods), len(before.pods), len(after.errors), len(before.errors))
        self._write_record()
        self.notifier.ready("reloaded")


# glibc gives every thread that allocates its own malloc arena; with ~30 worker threads (a
# lane per CSI driver) the arenas' free pages alone pushed the daemon past 80 MB at 1,000
# volumes. Two arenas are plenty for a process whose threads mostly wait. An operator's
# MALLOC_ARENA_MAX still wins.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt parameter (<malloc.h>)


def _limit_malloc_arenas() -> None:
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):  # not glibc: nothing to limit
        pass


def run_daemon(flag_values: dict) -> int:
    from volumemanager.logs import setup_logging
    from volumemanager.metrics import MetricsError

    _limit_malloc_arenas()
    try:
        cfg = build_config(flag_values)
        setup_logging(cfg.log_format, cfg.log_level)
        daemon = Daemon(cfg)
        daemon.flag_values = dict(flag_values)
    except (ConfigError, AdminError, OSError, ValueError, MetricsError) as e:
        print(f"volumemanager: {e}", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, daemon.request_stop)
    signal.signal(signal.SIGINT, daemon.request_stop)
    signal.signal(signal.SIGHUP, daemon.request_reload)
    try:
        return daemon.run()
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, for the operator
        log.exception("fatal error")
        print(f"volumemanager: fatal: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
