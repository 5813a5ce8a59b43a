"""FlexDriver against real shell-script drivers: the kubelet's argv and options for each verb,
real loop devices and mounts, and every way a driver call can go wrong."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path

import pytest

from mount_utils.mountinfo import MountTable
from operation_executor.errors import FinalError, UncertainError, WaitingError, is_uncertain
from tests.plugins_flex.drivers import (
    LOOPDISK,
    TMPFS,
    install_driver,
    read_call_log,
    set_behaviour,
    verbs,
)
from volumemanager.plugins.flexvolume_driver import (
    DriverCapabilities,
    DriverFailure,
    DriverMissing,
    DriverNotSupported,
    DriverReplyError,
    DriverTimeout,
    FlexDriver,
    build_options,
    parse_reply,
)

NODE = "node-1"


def is_mounted(path: Path) -> bool:
    return MountTable.read().is_mount_point(str(path))


def driver_for(installed) -> FlexDriver:
    return FlexDriver(installed.name, str(installed.executable))


def test_attachable_driver_in_kubelet_call_order(flex_dirs, backing_file, tmp_path):
    plugin_dir, work = flex_dirs
    inst = install_driver(plugin_dir, LOOPDISK, work)
    drv = driver_for(inst)
    assert drv.init() == DriverCapabilities(attach=True)

    pv = "pv-loop-1"
    opts = build_options(pv_or_volume_name=pv, fs_type="ext4", user_options={"backingFile": str(backing_file)})
    dmp = tmp_path / "plugins/kubernetes.io/flexvolume/test/loopdisk/mounts" / pv
    target = tmp_path / "pods/uid-1/volumes/test~loopdisk" / pv
    mount_opts = build_options(pv_or_volume_name=pv, fs_type="ext4", pod_name="web", pod_namespace="ns1",
                               pod_uid="uid-1", service_account_name="sa1",
                               user_options={"backingFile": str(backing_file)})

    device = drv.attach(opts, NODE)
    assert device.startswith("/dev/loop")
    assert drv.wait_for_attach(device, opts) == device
    assert drv.is_attached(opts, NODE) is True
    drv.mount_device(str(dmp), device, opts)
    assert is_mounted(dmp)
    drv.mount(str(target), mount_opts)
    assert is_mounted(target)
    (target / "hello").write_text("hi")
    assert (dmp / "hello").read_text() == "hi"

    drv.unmount(str(target))
    assert not is_mounted(target)
    drv.unmount_device(str(dmp))
    assert not is_mounted(dmp)
    drv.detach(pv, NODE)
    assert drv.is_attached(opts, NODE) is False

    opts_json = json.dumps(opts, sort_keys=True, separators=(",", ":"))
    mount_json = json.dumps(mount_opts, sort_keys=True, separators=(",", ":"))
    assert read_call_log(inst) == [
        ["init"],
        ["attach", opts_json, NODE],
        ["waitforattach", device, opts_json],
        ["isattached", opts_json, NODE],
        ["mountdevice", str(dmp), device, opts_json],
        ["mount", str(target), mount_json],
        ["unmount", str(target)],
        ["unmountdevice", str(dmp)],
        ["detach", pv, NODE],
        ["isattached", opts_json, NODE],
    ]
    assert json.loads(mount_json) == {
        "backingFile": str(backing_file),
        "kubernetes.io/fsType": "ext4",
        "kubernetes.io/readwrite": "rw",
        "kubernetes.io/pvOrVolumeName": pv,
        "kubernetes.io/pod.name": "web",
        "kubernetes.io/pod.namespace": "ns1",
        "kubernetes.io/pod.uid": "uid-1",
        "kubernetes.io/serviceAccount.name": "sa1",
    }


def test_non_attachable_driver_mounts_tmpfs_and_is_not_supported_otherwise(flex_dirs, tmp_path):
    plugin_dir, work = flex_dirs
    inst = install_driver(plugin_dir, TMPFS, work)
    drv = driver_for(inst)
    assert drv.init().attach is False
    target = tmp_path / "pods/uid-2/volumes/test~tmpfs/scratch"
    opts = build_options(pv_or_volume_name="scratch", read_only=False, pod_name="p", pod_namespace="default",
                         pod_uid="uid-2", user_options={"size": "8m"})
    drv.mount(str(target), opts)
    assert is_mounted(target)
    assert os.statvfs(target).f_blocks * os.statvfs(target).f_frsize == 8 << 20
    drv.unmount(str(target))
    assert not is_mounted(target)

    with pytest.raises(DriverNotSupported) as exc:
        drv.attach(opts, NODE)
    assert exc.value.code == "NOT_SUPPORTED" and isinstance(exc.value, FinalError)
    calls = len(read_call_log(inst))
    # Remembered for the driver's life, as in the kubelet: the driver is not asked again.
    with pytest.raises(DriverNotSupported):
        drv.attach(opts, NODE)
    assert len(read_call_log(inst)) == calls
    assert verbs(inst) == ["init", "mount", "unmount", "attach"]


def test_failure_reply_carries_the_driver_message(flex_dirs, tmp_path):
    plugin_dir, work = flex_dirs
    inst = install_driver(plugin_dir, TMPFS, work)
    set_behaviour(inst, "fail", "mount", "the disk is on fire")
    drv = driver_for(inst)
    with pytest.raises(DriverFailure) as exc:
        drv.mount(str(tmp_path / "t"), build_options(pv_or_volume_name="v", pod_name="p"))
    err = exc.value
    assert err.driver_message == "the disk is on fire"
    assert err.code == "DRIVER_FAILURE" and err.exit_code == 1
    assert "the disk is on fire" in str(err) and "test/tmpfs" in str(err) and "mount" in str(err)
    assert not is_uncertain(err)


def test_hung_driver_is_killed_with_its_process_group(flex_dirs, tmp_path):
    plugin_dir, work = flex_dirs
    inst = install_driver(plugin_dir, TMPFS, work)
    set_behaviour(inst, "hang", "mount")
    drv = driver_for(inst)
    started = time.monotonic()
    with pytest.raises(DriverTimeout) as exc:
        drv.mount(str(tmp_path / "t"), build_options(pv_or_volume_name="v", pod_name="p"), timeout=1.5)
    assert time.monotonic() - started < 10
    assert exc.value.code == "DEADLINE_EXCEEDED" and is_uncertain(exc.value)
    assert isinstance(exc.value, UncertainError)
    pids = [int(p) for p in (inst.state_dir / "hang.mount.pids").read_text().split()]
    assert len(pids) == 2
    for pid in pids:  # the script and its `sleep` child
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(f"/proc/{pid}"), f"pid {pid} survived the timeout"


@pytest.mark.parametrize("output, problem", [
    ("hello world\n", "not JSON"),
    ("", "empty output"),
    ('["Success"]', "not an object"),
    ('{"status": "Success", "attached": "yes"}', "attached is str"),
    ('{"status": "Success"} trailing', "not JSON"),
])
def test_garbage_output_is_a_clear_uncertain_error(flex_dirs, tmp_path, output, problem):
    plugin_dir, work = flex_dirs
    inst = install_driver(plugin_dir, TMPFS, work)
    set_behaviour(inst, "garbage", "unmount", output)
    with pytest.raises(DriverReplyError) as exc:
        driver_for(inst).unmount(str(tmp_path / "t"))
    assert problem in str(exc.value)
    assert repr(output[:50]).strip("'") in str(exc.value) or output == ""
    assert exc.value.code == "BAD_DRIVER_REPLY" and is_uncertain(exc.value)


def test_huge_output_is_bounded(flex_dirs, tmp_path):
    plugin_dir, work = flex_dirs
    inst = install_driver(plugin_dir, TMPFS, work)
    set_behaviour(inst, "garbage", "unmount", "x" * (3 << 20))
    with pytest.raises(DriverReplyError) as exc:
        driver_for(inst).unmount(str(tmp_path / "t"))
    assert "longer than" in str(exc.value) and len(str(exc.value)) < 1000


def test_secrets_are_base64_for_the_driver_and_masked_in_logs(flex_dirs, tmp_path, caplog):
    plugin_dir, work = flex_dirs
    inst = install_driver(plugin_dir, TMPFS, work)
    drv = driver_for(inst)
    opts = build_options(pv_or_volume_name="v", pod_name="p", secrets={"password": "hunter2-secret"})
    b64 = base64.b64encode(b"hunter2-secret").decode()
    assert opts["kubernetes.io/secret/password"] == b64
    target = tmp_path / "t"
    caplog.set_level(logging.DEBUG, logger="volumemanager.plugins.flexvolume_driver")
    drv.mount(str(target), opts)
    drv.unmount(str(target))
    # The driver got the real value...
    assert json.loads(read_call_log(inst)[0][2])["kubernetes.io/secret/password"] == b64
    # ...our log only the mask.
    assert "kubernetes.io/secret/password" in caplog.text and "***" in caplog.text
    assert b64 not in caplog.text and "hunter2" not in caplog.text

    # A driver echoing the secret back in a failure or garbage does not leak it through us.
    set_behaviour(inst, "garbage", "mount", f"oops {b64} hunter2-secret")
    with pytest.raises(DriverReplyError) as exc:
        drv.mount(str(target), opts)
    assert b64 not in str(exc.value) and "hunter2" not in str(exc.value)
    (inst.state_dir / "garbage.mount").unlink()
    set_behaviour(inst, "fail", "mount", "bad password hunter2-secret")
    with pytest.raises(DriverFailure) as exc2:
        drv.mount(str(target), opts)
    assert "hunter2" not in str(exc2.value)
    assert "hunter2" not in caplog.text


def test_missing_executable_waits_for_the_driver(tmp_path):
    drv = FlexDriver("acme/none", str(tmp_path / "acme~none" / "none"))
    with pytest.raises(DriverMissing) as exc:
        drv.init()
    assert isinstance(exc.value, WaitingError) and exc.value.waiting_for == "FlexVolume driver acme/none"


def test_success_with_nonzero_exit_is_a_driver_bug(tmp_path):
    exe = tmp_path / "bug"
    exe.write_text('#!/bin/sh\necho \'{"status": "Success"}\'\nexit 3\n')
    exe.chmod(0o755)
    with pytest.raises(DriverReplyError) as exc:
        FlexDriver("x/bug", str(exe)).unmount("/nonexistent")
    assert "exited non-zero" in str(exc.value) and exc.value.exit_code == 3


def test_argv_layout_per_verb():
    o = {"k": "v"}
    j = '{"k":"v"}'
    argv = FlexDriver.argv
    assert argv("init") == ["init"]
    assert argv("getvolumename", options=o) == ["getvolumename", j]
    assert argv("attach", "n1", options=o) == ["attach", j, "n1"]
    assert argv("waitforattach", "/dev/x", options=o) == ["waitforattach", "/dev/x", j]
    assert argv("isattached", "n1", options=o) == ["isattached", j, "n1"]
    assert argv("detach", "pv", "n1") == ["detach", "pv", "n1"]
    assert argv("mountdevice", "/m", "/dev/x", options=o) == ["mountdevice", "/m", "/dev/x", j]
    assert argv("unmountdevice", "/m") == ["unmountdevice", "/m"]
    assert argv("mount", "/t", options=o) == ["mount", "/t", j]
    assert argv("unmount", "/t") == ["unmount", "/t"]
    assert argv("expandvolume", "/m", "2", "1", options=o) == ["expandvolume", j, "/m", "2", "1"]
    assert argv("expandfs", "/dev/x", "/m", "2", "1", options=o) == ["expandfs", j, "/dev/x", "/m", "2", "1"]
    with pytest.raises(ValueError):
        argv("mount", options=o)
    with pytest.raises(ValueError):
        argv("unmount", "/t", options=o)
    with pytest.raises(ValueError):
        argv("format", "/t")


def test_parse_reply_follows_go_json():
    # Keys match case-insensitively; unknown keys and nulls are ignored.
    s = parse_reply('{"Status": "Success", "DEVICE": "/dev/sdb", "volumeName": "v", "extra": 1, "message": null}')
    assert (s.status, s.device, s.volume_name, s.message) == ("Success", "/dev/sdb", "v", "")
    # Capabilities default like the kubelet's; a reply overrides only the keys it has.
    assert parse_reply('{"status": "Success"}').capabilities == DriverCapabilities()
    caps = parse_reply('{"status": "Success", "capabilities": {"attach": false}}').capabilities
    assert caps == DriverCapabilities(attach=False, selinux_relabel=True, supports_metrics=False,
                                      fs_group=True, requires_fs_resize=True)
    assert parse_reply('{"status": "Success", "volumeNewSize": 1024}').volume_new_size == 1024
    for bad in ('{"status": 1}', '{"status": "Success", "capabilities": {"attach": "no"}}',
                '{"status": "Success", "volumeNewSize": true}', "null"):
        with pytest.raises(ValueError):
            parse_reply(bad)


def test_build_options_like_the_kubelet():
    opts = build_options(pv_or_volume_name="pv1", fs_type="xfs", read_only=True, fs_group=2000,
                         user_options={"kubernetes.io/fsType": "ext4", "size": "1G"})
    assert opts == {
        "kubernetes.io/fsType": "ext4",  # the volume's own options override ours
        "kubernetes.io/readwrite": "ro",
        "kubernetes.io/pvOrVolumeName": "pv1",
        "kubernetes.io/mounterArgs.FsGroup": "2000",
        "size": "1G",
    }
    pod = build_options(pv_or_volume_name="v", pod_name="p")
    assert pod["kubernetes.io/pod.namespace"] == "" and pod["kubernetes.io/serviceAccount.name"] == ""
    with pytest.raises(ValueError, match="'size'"):
        build_options(pv_or_volume_name="v", user_options={"size": 5})  # type: ignore[dict-item]
