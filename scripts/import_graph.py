#!/usr/bin/env python3
"""Prints which subpackage of `tollway` imports which, with the number of imports.

Used to compare the dependency graph before and after a refactor (issue 9 reports both). One
line per importing subpackage; generated stubs (`tollway.<svc>.v1`) are their own node, `<svc>.v1`,
because importing another service's stubs is allowed and importing its code is not.

    .venv/bin/python scripts/import_graph.py                    # the package in services/
    .venv/bin/python scripts/import_graph.py /tmp/old --external redis
    .venv/bin/python scripts/import_graph.py --package-dir /work/baseline/services

A count is the number of distinct (importing module, imported module) pairs, so a module that
imports three names from one module counts once. Imports inside a subpackage are not shown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tollway"


def node(module: str, externals: frozenset[str]) -> str | None:
    """The graph node a module belongs to: `gateway`, `gateway.v1`, `cli`, an external, or None.

    None means the module is not shown: the package's own `__init__`, or an external package
    that was not asked for.
    """
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return parts[0] if parts[0] in externals else None
    if len(parts) == 1:
        return None
    if len(parts) >= 3 and parts[2] == "v1":
        return f"{parts[1]}.v1"
    return parts[1]


def package_edges(directory: Path, externals: frozenset[str]) -> Counter[tuple[str, str]]:
    """Counts imports between the subpackages of the `tollway` package found in `directory`.

    Args:
        directory: A directory that contains the `tollway` package (it is put on sys.path).
        externals: Top-level external packages to show as nodes (`redis`, `tests`).

    Returns:
        (importer node, imported node) -> number of module-level import pairs between them.
    """
    sys.path.insert(0, str(directory))
    graph = grimp.build_graph(PACKAGE, include_external_packages=bool(externals), cache_dir=None)
    edges: Counter[tuple[str, str]] = Counter()
    for importer in graph.modules:
        source = node(importer, externals)
        if source is None:
            continue
        for imported in graph.find_modules_directly_imported_by(importer):
            target = node(imported, externals)
            if target is not None and target != source:
                edges[source, target] += 1
    return edges


def render(edges: Counter[tuple[str, str]]) -> str:
    """One line per importer, `gateway -> cache.v1 (3), common (2)`, importers sorted by name."""
    by_source: dict[str, list[tuple[str, int]]] = {}
    for (source, target), count in edges.items():
        by_source.setdefault(source, []).append((target, count))
    width = max((len(s) for s in by_source), default=0)
    lines = []
    for source in sorted(by_source):
        targets = ", ".join(f"{t} ({c})" for t, c in sorted(by_source[source]))
        lines.append(f"{source:<{width}} -> {targets}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "directory", nargs="?", type=Path, default=ROOT / "services", help="a directory holding the tollway package"
    )
    where.add_argument(
        "--package-dir",
        type=Path,
        help="the tollway package itself, under any name (the pre-src layout: services/ was the package)",
    )
    parser.add_argument(
        "--external", action="append", default=[], metavar="PKG", help="also show imports of this external package"
    )
    args = parser.parse_args(argv)
    externals = frozenset(args.external)
    if args.package_dir is not None:
        package = args.package_dir.resolve()
        if not (package / "__init__.py").is_file():
            parser.error(f"--package-dir {args.package_dir}: no __init__.py there, so it is not a package")
        # grimp finds a package by its import name, so the folder is presented as `tollway`.
        with tempfile.TemporaryDirectory(prefix="import-graph-") as tmp:
            (Path(tmp) / PACKAGE).symlink_to(package, target_is_directory=True)
            edges = package_edges(Path(tmp), externals)
    else:
        if not (args.directory / PACKAGE / "__init__.py").is_file():
            parser.error(f"{args.directory}: no {PACKAGE}/__init__.py inside (--package-dir takes the package itself)")
        edges = package_edges(args.directory.resolve(), externals)
    print(render(edges))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
