// Package sdk is the root of the Croupier Go client module. The gRPC stubs are generated from
// the repository's proto/ into croupier/<pkg>/v1 (import croupier.dev/sdk/go/croupier/<pkg>/v1);
// they are not kept in git, so run `go generate .` (or ./generate.sh) before building.
// cmd/example is a caller that exercises the registry, invocation, jobs and watch.
package sdk

//go:generate ./generate.sh
