"""Generated gRPC stubs; regenerate with scripts/gen-proto.sh, never edit by hand."""
