#!/usr/bin/env bash
# Regenerate the committed gRPC/protobuf stubs under volumemanager/_proto/ from protos/.
#
# Sources (see protos/README.md):
#   protos/volumemanager/_proto/csi/v1/csi.proto
#       CSI spec csi.proto, the line after tag v1.12.0 (1.13: alpha volume-health RPCs).
#   protos/volumemanager/_proto/pluginregistration/v1/api.proto
#       k8s.io/kubelet pkg/apis/pluginregistration/v1/api.proto (gogo-free).
#
# Generated with the pinned grpcio-tools 1.76.* (bundled protoc 31.1): the gencode needs
# protobuf >= 6.31.1 and grpcio >= 1.76 at run time, which setup.cfg requires. A newer
# grpcio-tools would raise both floors, so the script refuses any other version.
#
# Usage: scripts/gen-proto.sh [OUT_DIR]   (default: the repository root; tests pass a tmp dir)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$here}"
python="${PYTHON:-python}"
if [[ -x "$here/.venv/bin/python" && -z "${PYTHON:-}" ]]; then
    python="$here/.venv/bin/python"
fi

want="1.76."
have="$("$python" -c 'from importlib.metadata import version; print(version("grpcio-tools"))')"
if [[ "$have" != "$want"* ]]; then
    echo "gen-proto: grpcio-tools $have installed, ${want}* required" >&2
    exit 1
fi

cd "$here"
protos=(
    volumemanager/_proto/csi/v1/csi.proto
    volumemanager/_proto/pluginregistration/v1/api.proto
)
mkdir -p "$out"
"$python" -m grpc_tools.protoc -I protos \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    "${protos[@]}"

# protoc writes no __init__.py; the packages need them to be importable.
for d in volumemanager/_proto volumemanager/_proto/csi volumemanager/_proto/csi/v1 \
         volumemanager/_proto/pluginregistration volumemanager/_proto/pluginregistration/v1; do
    if [[ ! -f "$out/$d/__init__.py" ]]; then
        echo '"""Generated gRPC stubs; regenerate with scripts/gen-proto.sh, never edit by hand."""' > "$out/$d/__init__.py"
    fi
done
