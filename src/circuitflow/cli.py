"""``circuitflow`` command line: ``circuitflow verify PATH...`` re-hashes artifacts."""

from __future__ import annotations

import argparse
import sys

from circuitflow import store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="circuitflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser("verify", help="re-hash an artifact and name any changed file")
    verify.add_argument("paths", nargs="+", help="artifact directory or file with a manifest")
    args = parser.parse_args(argv)

    status = 0
    for path in args.paths:
        try:
            problems = store.verify(path)
        except (FileNotFoundError, KeyError, ValueError) as err:
            print(f"{path}: {err}", file=sys.stderr)
            status = 2
            continue
        if problems:
            status = 1
            for line in problems:
                print(f"{path}: {line}")
        else:
            n = len(store.read_manifest(path)["files"])
            print(f"{path}: ok ({n} files)")
    return status


if __name__ == "__main__":
    sys.exit(main())
