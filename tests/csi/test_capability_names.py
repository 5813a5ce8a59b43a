"""Node capability names come from the generated enum; a value the vendored spec retired
(4, the alpha VOLUME_CONDITION) keeps its old name, and only a value no spec names is
UNKNOWN_<n>. The driver is a minimal real gRPC server on a unix socket (the outermost edge)."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from volumemanager._proto.csi.v1 import csi_pb2, csi_pb2_grpc
from volumemanager.csi.client import CSINodeClient, node_capability_name

RPC = csi_pb2.NodeServiceCapability.RPC


class _Node(csi_pb2_grpc.NodeServicer):
    def __init__(self, values: list[int]) -> None:
        self.values = values

    def NodeGetCapabilities(self, request, context):  # noqa: N802 - gRPC's name
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[
            csi_pb2.NodeServiceCapability(rpc=RPC(type=v)) for v in self.values])


@pytest.fixture
def node_server(tmp_path):
    servers = []

    def start(values: list[int]) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        csi_pb2_grpc.add_NodeServicer_to_server(_Node(values), server)
        path = tmp_path / f"csi{len(servers)}.sock"
        server.add_insecure_port(f"unix://{path}")
        server.start()
        servers.append(server)
        return f"unix://{path}"

    yield start
    for server in servers:
        server.stop(grace=None).wait(5)


def test_volume_condition_and_newer_values_are_named(node_server):
    endpoint = node_server([RPC.STAGE_UNSTAGE_VOLUME, 4, RPC.VOLUME_MOUNT_GROUP, RPC.GET_VOLUME_HEALTH, 99])
    with CSINodeClient(endpoint, timeout=5) as client:
        assert client.node_get_capabilities() == {
            "STAGE_UNSTAGE_VOLUME", "VOLUME_CONDITION", "VOLUME_MOUNT_GROUP", "GET_VOLUME_HEALTH", "UNKNOWN_99"}


def test_every_generated_value_is_named_from_the_enum():
    for name, value in RPC.Type.items():
        assert node_capability_name(value) == name
    assert node_capability_name(4) == "VOLUME_CONDITION"
    assert node_capability_name(1234) == "UNKNOWN_1234"
