"""Payload building of configMap, secret, downwardAPI and projected volumes: which files, which
bytes, which modes, and when the content is unavailable (the kubelet's rules)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from mount_utils.mounter import LinuxMounter
from operation_executor.types import PodInfo, VolumeSpec
from volumemanager.manifests import models as m
from volumemanager.plugin_host import DaemonPluginHost
from volumemanager.plugins import build_plugins
from volumemanager.plugins.projection import (
    SERVICE_ACCOUNT_TOKEN_REASON,
    ContentUnavailable,
    content_token,
    format_map,
    go_quote,
    keyed_payload,
    resource_value,
)

POD = PodInfo(
    uid="11111111-2222-4333-8444-555555555555", namespace="demo", name="web",
    labels={"app": "web", "tier": 'fr"ont'}, annotations={"note": "line1\nline2"},
    containers=(("main", {"cpu": Fraction(1, 4), "memory": Fraction(64 * 2**20)},
                 {"cpu": Fraction(3, 2), "memory": Fraction(128 * 2**20)}),),
)
ALLOC = {"cpu": Fraction(2), "memory": Fraction(2**30), "ephemeral-storage": Fraction(10**10)}


class Objects:
    """The object lookup at the edge: plain dicts of ConfigMaps and Secrets."""

    def __init__(self, configmaps=None, secrets=None):
        self.configmaps = configmaps or {}
        self.secrets = secrets or {}

    def get_configmap(self, ref):
        return self.configmaps.get((ref.namespace, ref.name))

    def get_secret(self, ref):
        return self.secrets.get((ref.namespace, ref.name))


@pytest.fixture
def plugins(tmp_path):
    return build_plugins(DaemonPluginHost(str(tmp_path), "node", LinuxMounter()))


def kp(key, path, mode=None):
    return m.KeyToPath(key, path, mode)


def spec_for(plugins, source, info=POD):
    plugin = plugins.find_for_source(source)
    return plugin, VolumeSpec(name="v", plugin_name=plugin.name, source=source,
                              pod_info=info if plugin.uses_pod_info else None)


def files(payload):
    return {p: (f.data, oct(f.mode)) for p, f in payload.items()}


def test_the_four_plugins_are_registered_under_kubelet_names(plugins):
    for name in ("kubernetes.io/configmap", "kubernetes.io/secret", "kubernetes.io/downward-api",
                 "kubernetes.io/projected"):
        p = plugins.find(name)
        assert p.operation_lane(None) == "quick"
        assert p.durable_intents is False
        assert not p.is_device_mountable(None)
    assert plugins.find("kubernetes.io/secret").pod_dir_is_mount_point(None)
    assert plugins.find("kubernetes.io/projected").pod_dir_is_mount_point(None)
    assert not plugins.find("kubernetes.io/configmap").pod_dir_is_mount_point(None)
    assert not plugins.find("kubernetes.io/downward-api").pod_dir_is_mount_point(None)


def test_configmap_every_key_with_default_mode(plugins):
    plugin, spec = spec_for(plugins, m.ConfigMapVolumeSource("cfg", (), 0o640, False))
    objs = Objects(configmaps={("demo", "cfg"): {"a": b"1", "b.txt": b"2"}})
    assert files(plugin.build_payload(spec, "demo", objs)) == {"a": (b"1", "0o640"), "b.txt": (b"2", "0o640")}


def test_items_pick_keys_paths_and_modes(plugins):
    src = m.ConfigMapVolumeSource("cfg", (kp("a", "conf/a.ini", 0o600), kp("b", "b")), 0o644, False)
    plugin, spec = spec_for(plugins, src)
    objs = Objects(configmaps={("demo", "cfg"): {"a": b"1", "b": b"2", "c": b"3"}})
    assert files(plugin.build_payload(spec, "demo", objs)) == {"conf/a.ini": (b"1", "0o600"), "b": (b"2", "0o644")}


def test_missing_configmap_waits_unless_optional(plugins):
    plugin, spec = spec_for(plugins, m.ConfigMapVolumeSource("nope", (), 0o644, False))
    with pytest.raises(ContentUnavailable) as info:
        plugin.build_payload(spec, "demo", Objects())
    assert info.value.reason == "configmap demo/nope not found"
    assert info.value.waiting_for == "configmap demo/nope"
    plugin, spec = spec_for(plugins, m.ConfigMapVolumeSource("nope", (), 0o644, True))
    assert plugin.build_payload(spec, "demo", Objects()) == {}


def test_missing_key_in_items_is_an_error_unless_optional(plugins):
    objs = Objects(secrets={("demo", "s"): {"a": b"x"}})
    plugin, spec = spec_for(plugins, m.SecretVolumeSource("s", (kp("a", "a"), kp("gone", "g")), 0o400, False))
    with pytest.raises(ContentUnavailable, match="secret demo/s has no key 'gone'"):
        plugin.build_payload(spec, "demo", objs)
    plugin, spec = spec_for(plugins, m.SecretVolumeSource("s", (kp("a", "a"), kp("gone", "g")), 0o400, True))
    assert files(plugin.build_payload(spec, "demo", objs)) == {"a": (b"x", "0o400")}


def test_go_quote_and_label_format():
    assert go_quote('a"b\\c\n\x01é') == '"a\\"b\\\\c\\n\\x01é"'
    assert format_map({"b": "2", "a": "1"}) == 'a="1"\nb="2"'


def test_downward_fields_and_resources(plugins):
    items = (
        m.DownwardAPIVolumeFile("name", m.ObjectFieldSelector("metadata.name"), None, None),
        m.DownwardAPIVolumeFile("ns", m.ObjectFieldSelector("metadata.namespace"), None, 0o600),
        m.DownwardAPIVolumeFile("uid", m.ObjectFieldSelector("metadata.uid"), None, None),
        m.DownwardAPIVolumeFile("labels", m.ObjectFieldSelector("metadata.labels"), None, None),
        m.DownwardAPIVolumeFile("annotations", m.ObjectFieldSelector("metadata.annotations"), None, None),
        m.DownwardAPIVolumeFile("app", m.ObjectFieldSelector("metadata.labels['app']"), None, None),
        m.DownwardAPIVolumeFile("cpu_limit", None, m.ResourceFieldSelector("main", "limits.cpu", Fraction(1)), None),
        m.DownwardAPIVolumeFile("cpu_req_m", None, m.ResourceFieldSelector("main", "requests.cpu", Fraction(1, 1000)),
                                None),
        m.DownwardAPIVolumeFile("mem_mi", None, m.ResourceFieldSelector("main", "limits.memory", Fraction(2**20)), None),
        m.DownwardAPIVolumeFile("eph", None, m.ResourceFieldSelector("main", "limits.ephemeral-storage", Fraction(1)),
                                None),
    )
    plugin, spec = spec_for(plugins, m.DownwardAPISource(items, 0o644))
    plugin._allocatable = lambda: ALLOC
    got = files(plugin.build_payload(spec, "demo", Objects()))
    assert got["name"] == (b"web", "0o644")
    assert got["ns"] == (b"demo", "0o600")
    assert got["uid"][0] == POD.uid.encode()
    assert got["labels"][0] == b'app="web"\ntier="fr\\"ont"'
    assert got["annotations"][0] == b'note="line1\\nline2"'
    assert got["app"][0] == b"web"
    assert got["cpu_limit"][0] == b"2"  # ceil(1.5 / 1)
    assert got["cpu_req_m"][0] == b"250"
    assert got["mem_mi"][0] == b"128"
    assert got["eph"][0] == b"10000000000"  # no limit: the node's allocatable


def test_resource_of_unknown_container_is_unavailable():
    sel = m.ResourceFieldSelector("sidecar", "limits.cpu", Fraction(1))
    with pytest.raises(ContentUnavailable, match="sidecar"):
        resource_value(sel, POD, ALLOC)


def test_projected_combines_sources_and_later_wins(plugins):
    src = m.ProjectedSource((
        m.ConfigMapProjection("cfg", (), False),
        m.SecretProjection("s", (kp("k", "a", 0o400),), False),
        m.DownwardAPIProjection((m.DownwardAPIVolumeFile("podname", m.ObjectFieldSelector("metadata.name"),
                                                         None, None),)),
        m.ConfigMapProjection("absent", (), True),
    ), 0o444)
    plugin, spec = spec_for(plugins, src)
    objs = Objects(configmaps={("demo", "cfg"): {"a": b"cm", "b": b"cm-b"}}, secrets={("demo", "s"): {"k": b"sec"}})
    assert files(plugin.build_payload(spec, "demo", objs)) == {
        "a": (b"sec", "0o400"), "b": (b"cm-b", "0o444"), "podname": (b"web", "0o444")}


def test_projected_service_account_token_waits_for_an_api_server(plugins):
    src = m.ProjectedSource((m.ServiceAccountTokenProjection("token", "", 3600),), 0o644)
    plugin, spec = spec_for(plugins, src)
    with pytest.raises(ContentUnavailable) as info:
        plugin.build_payload(spec, "demo", Objects())
    assert info.value.reason == SERVICE_ACCOUNT_TOKEN_REASON


def test_content_token_follows_content_and_tells_nothing():
    a = content_token(lambda: keyed_payload("secret", "d", "s", {"k": b"hunter2"}, (), 0o644, False))
    b = content_token(lambda: keyed_payload("secret", "d", "s", {"k": b"hunter2"}, (), 0o644, False))
    c = content_token(lambda: keyed_payload("secret", "d", "s", {"k": b"hunter3"}, (), 0o644, False))
    d = content_token(lambda: keyed_payload("secret", "d", "s", {"k": b"hunter2"}, (), 0o600, False))
    missing = content_token(lambda: keyed_payload("secret", "d", "s", None, (), 0o644, False))
    assert a == b and len({a, c, d, missing}) == 4
    assert "hunter2" not in a
