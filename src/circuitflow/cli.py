"""``circuitflow`` command line: ``circuitflow verify PATH...`` re-hashes artifacts, or every
artifact under a results tree."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from circuitflow import store


def _verify_one(path: str) -> tuple[int, list[str], int]:
    """(artifacts checked, problems, files hashed) of one artifact or one tree."""
    if store.has_manifest(path) or not Path(path).is_dir():
        problems = store.verify(path)
        return 1, problems, len(store.read_manifest(path)["files"])
    n, problems = store.verify_tree(path)
    if n == 0 and not problems:
        raise FileNotFoundError(f"no artifacts under {path}; run snakemake first")
    return n, problems, 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="circuitflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    verify = sub.add_parser(
        "verify", help="re-hash artifacts and name every changed, missing or unexpected file"
    )
    verify.add_argument(
        "paths", nargs="+", help="an artifact (store, directory or file with a manifest) or a tree"
    )
    args = parser.parse_args(argv)

    status = 0
    for path in args.paths:
        try:
            n, problems, n_files = _verify_one(path)
        except (FileNotFoundError, KeyError, ValueError) as err:
            print(f"{path}: {err}", file=sys.stderr)
            status = 2
            continue
        for line in problems:
            print(f"{path}: {line}")
        if problems:
            status = 1
        elif n_files:
            print(f"{path}: ok ({n_files} files)")
        else:
            print(f"{path}: ok ({n} artifacts)")
    return status


if __name__ == "__main__":
    sys.exit(main())
