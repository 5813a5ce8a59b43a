"""Which API server the daemon talks to, and the errors that name the file at fault."""

from __future__ import annotations

import pytest

from tests.fake_apiserver.conftest import fake_apiserver, kubeconfig  # noqa: F401 - pytest fixtures
from volumemanager.kube.config import ApiServerConfig, KubeConfigError, api_server_config, make_client


def test_no_kubeconfig_and_no_service_account_is_manifest_only(tmp_path):
    assert api_server_config(None, environ={}, service_account_dir=str(tmp_path)) is None


def test_in_cluster_needs_the_service_host_and_a_token(tmp_path):
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert api_server_config(None, environ=env, service_account_dir=str(tmp_path)) is None
    (tmp_path / "token").write_text("t")
    assert api_server_config(None, environ=env, service_account_dir=str(tmp_path)) == ApiServerConfig(in_cluster=True)


def test_a_kubeconfig_flag_wins_over_in_cluster(tmp_path):
    (tmp_path / "token").write_text("t")
    cfg = api_server_config("kc.yaml", environ={"KUBERNETES_SERVICE_HOST": "h"}, service_account_dir=str(tmp_path))
    assert cfg is not None and cfg.kubeconfig is not None and cfg.kubeconfig.endswith("/kc.yaml")


def test_a_missing_kubeconfig_names_the_file(tmp_path):
    with pytest.raises(KubeConfigError, match="missing.yaml"):
        make_client(ApiServerConfig(kubeconfig=str(tmp_path / "missing.yaml")))


def test_the_client_reaches_the_server_of_the_kubeconfig(fake_apiserver, kubeconfig):  # noqa: F811
    from lightkube.resources.core_v1 import Node

    fake_apiserver.upsert({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})
    client = make_client(ApiServerConfig(kubeconfig=str(kubeconfig)))
    assert client.get(Node, "n1").metadata.name == "n1"
