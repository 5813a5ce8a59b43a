"""A scripted volume plugin for reconciler state-machine tests (the kubelet's convention:
behaviour is scripted per volume, every call is recorded). It touches no mounts; the real
plugins are tested on real mounts elsewhere."""

from __future__ import annotations

import threading
from collections import defaultdict

from operation_executor.errors import FinalError, UncertainError, WaitingError
from operation_executor.plugin import VolumePlugin
from operation_executor.types import PodRef, VolumeSpec


class ScriptedPlugin(VolumePlugin):
    name = "test/scripted"

    def __init__(self, device_mountable: bool = True) -> None:
        super().__init__(host=None)  # type: ignore[arg-type]
        self._dm = device_mountable
        self.calls: list[tuple[str, str, str | None]] = []
        self.fail: dict[tuple[str, str], list[BaseException]] = defaultdict(list)  # (method, volume) -> errors
        self.device_present: dict[str, bool] = defaultdict(lambda: True)
        self.lock = threading.Lock()

    def script(self, method: str, volume: str, *errors: BaseException) -> None:
        self.fail[(method, volume)].extend(errors)

    def _call(self, method: str, spec: VolumeSpec, pod: str | None = None) -> None:
        with self.lock:
            self.calls.append((method, spec.name, pod))
            errs = self.fail.get((method, spec.name))
            if errs:
                raise errs.pop(0)

    def count(self, method: str, volume: str | None = None) -> int:
        with self.lock:
            return sum(1 for m, v, _ in self.calls if m == method and (volume is None or v == volume))

    def methods(self) -> list[str]:
        with self.lock:
            return [m for m, _, _ in self.calls]

    def is_device_mountable(self, spec: VolumeSpec) -> bool:
        return self._dm

    def wait_for_device(self, spec: VolumeSpec) -> str | None:
        if not self.device_present[spec.name]:
            raise WaitingError(f"waiting for device of {spec.name}", waiting_for=f"device /dev/{spec.name}")
        return f"/dev/{spec.name}"

    def device_mount_path(self, spec: VolumeSpec) -> str | None:
        return f"/global/{spec.name}" if self._dm else None

    def mount_device(self, spec, device_path, device_mount_path) -> None:
        self._call("mount_device", spec)

    def unmount_device(self, spec, device_mount_path) -> None:
        self._call("unmount_device", spec)

    def mount_path(self, spec: VolumeSpec, pod: PodRef, outer_name: str) -> str:
        return f"/pods/{pod.uid}/{outer_name}"

    def set_up(self, spec, pod, outer_name, device_mount_path) -> None:
        self._call("set_up", spec, pod.uid)

    def tear_down(self, spec, pod, outer_name, mount_path) -> None:
        self._call("tear_down", spec, pod.uid)


TIMEOUT = UncertainError("deadline exceeded", code="DEADLINE_EXCEEDED")


def final(msg: str = "invalid") -> FinalError:
    return FinalError(msg, code="INVALID_ARGUMENT")
