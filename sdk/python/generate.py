"""Generates the protobuf and gRPC code of the SDK from the repository's proto/ directory.

    python generate.py           # (re)writes src/croupier/{common,control,function,registry}
    python generate.py --check   # exits 1 when the committed code differs from a fresh run

Needs grpcio-tools (the version pinned in scripts/python-test.sh). The generated modules are
committed, so installing the package needs no protoc. Each generated package directory gets an
empty __init__.py.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO_DIR = HERE.parent.parent / "proto"
PACKAGE = HERE / "src" / "croupier"
GENERATED = ("common", "control", "function", "registry")


def generate(out: Path) -> None:
    """Runs grpc_tools.protoc over every proto under proto/croupier into `out`."""
    import grpc_tools
    from grpc_tools import protoc

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "croupier").rglob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_DIR / 'croupier'}")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{wkt}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("grpc_tools.protoc failed")
    for d in (out / "croupier").rglob("*"):
        if d.is_dir():
            (d / "__init__.py").touch()


def files(root: Path) -> set[str]:
    """Paths (relative to `root`) of the generated files of the packages in GENERATED."""
    found: set[str] = set()
    for name in GENERATED:
        for p in (root / name).rglob("*"):
            if p.is_file() and "__pycache__" not in p.parts:
                found.add(str(p.relative_to(root)))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        fresh = out / "croupier"
        if args.check:
            want, have = files(fresh), files(PACKAGE)
            diff = sorted(want ^ have)
            diff += sorted(f for f in want & have if not filecmp.cmp(fresh / f, PACKAGE / f, shallow=False))
            if diff:
                print("generated code is stale; run `python sdk/python/generate.py`:", file=sys.stderr)
                for f in diff:
                    print(f"  {f}", file=sys.stderr)
                return 1
            print(f"generated code matches proto/ ({len(want)} files)")
            return 0
        for name in GENERATED:
            shutil.rmtree(PACKAGE / name, ignore_errors=True)
            shutil.copytree(fresh / name, PACKAGE / name)
        print(f"wrote {len(files(PACKAGE))} files under {os.path.relpath(PACKAGE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
