"""The committed gRPC stubs are what scripts/gen-proto.sh generates from protos/."""

from __future__ import annotations

import filecmp
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "volumemanager" / "_proto"


@pytest.mark.timeout(60)
def test_committed_stubs_match_regeneration(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (pip install -e .[test])")
    from importlib.metadata import version

    if not version("grpcio-tools").startswith("1.76."):
        pytest.skip(f"grpcio-tools {version('grpcio-tools')} installed; the stubs are pinned to 1.76.*")
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(["bash", str(REPO / "scripts" / "gen-proto.sh"), str(tmp_path)], check=True, env=env)
    fresh = tmp_path / "volumemanager" / "_proto"
    committed = sorted(p.relative_to(GENERATED) for p in GENERATED.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    generated = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert committed == generated, "the set of generated files differs: run scripts/gen-proto.sh"
    stale = [str(p) for p in committed if not filecmp.cmp(GENERATED / p, fresh / p, shallow=False)]
    assert not stale, f"stale generated files {stale}: run scripts/gen-proto.sh"


def test_stubs_import_under_package_path() -> None:
    from volumemanager._proto.csi.v1 import csi_pb2, csi_pb2_grpc
    from volumemanager._proto.pluginregistration.v1 import api_pb2_grpc

    assert csi_pb2.DESCRIPTOR.package == "csi.v1"
    assert csi_pb2_grpc.NodeStub and api_pb2_grpc.RegistrationStub
    secrets = csi_pb2.NodeStageVolumeRequest.DESCRIPTOR.fields_by_name["secrets"]
    assert secrets.GetOptions().Extensions[csi_pb2.csi_secret]
