# Versions of the tools the test scripts install, in one place (sourced by scripts/test.sh and
# scripts/clients-test.sh).
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2
