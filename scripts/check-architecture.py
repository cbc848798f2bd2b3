#!/usr/bin/env python3
"""Holds the code to docs/ARCHITECTURE.md: no import cycle between files, SQL only in
store/, the live and store layers import nothing above them, actix-web-actors only in
the socket module, and every server message built by the one enum. Exit 1 on any
breach, naming the file."""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SQL = re.compile(r'"\s*(SELECT|INSERT INTO|UPDATE \w+ SET|DELETE FROM|WITH \w+ AS)\b', re.S)


def rust_files(root):
    for d, _, files in os.walk(os.path.join(ROOT, root)):
        for f in files:
            if f.endswith(".rs"):
                yield os.path.join(d, f)


def non_test(src):
    """The source up to its `#[cfg(test)]` module, which holds only tests."""
    return src.split("#[cfg(test)]")[0]


def module_of(root, path):
    rel = os.path.relpath(path, os.path.join(ROOT, root))[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return tuple(rel)


def imports(root):
    """File-level edges: module -> modules it names through crate::, super:: or self::."""
    files = list(rust_files(root))
    mods = {module_of(root, f): f for f in files}
    edges = {m: set() for m in mods}
    for m, f in mods.items():
        src = non_test(open(f, encoding="utf-8").read())
        refs = []
        for kind, path in re.findall(r"\b(crate|super|self)((?:::\w+)+)", src):
            base = () if kind == "crate" else (m[:-1] if kind == "super" else m)
            refs.append(base + tuple(path.strip(":").split("::")))
        for group in re.findall(r"use crate::\{([^;]*)\};", src, re.S):
            for name in re.findall(r"(?:^|[,{\s])(\w+)(?=\s*(?:::|,|\}|$))", group):
                refs.append((name,))
        for full in refs:
            for i in range(len(full), 0, -1):
                t = full[:i]
                if t in mods:
                    if t != m and m[: len(t)] != t:
                        edges[m].add(t)
                    break
    return edges


def cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main():
    failures = []
    for root in ("src", "actors/src", "loadtests/src"):
        for comp in cycles(imports(root)):
            names = " <-> ".join("::".join(m) or "lib" for m in sorted(comp))
            failures.append(f"{root}: import cycle {names}")
    forbidden = {
        "src/live": ("http", "ws", "server", "state", "session"),
        "src/store": ("http", "ws", "server", "state", "live", "session"),
        "src/http": ("server",),
    }
    for path in rust_files("src"):
        rel = os.path.relpath(path, ROOT)
        src = non_test(open(path, encoding="utf-8").read())
        if not rel.startswith("src/store/") and SQL.search(src):
            failures.append(f"{rel}: SQL outside src/store/")
        for layer, above in forbidden.items():
            if rel.startswith(layer + "/"):
                for m in above:
                    if re.search(rf"\bcrate::{m}\b|use crate::\{{[^;]*\b{m}\b", src):
                        failures.append(f"{rel}: {layer} imports crate::{m}, a layer above it")
        if "actix_web_actors" in src and rel != "src/ws/session.rs":
            failures.append(f"{rel}: actix-web-actors outside src/ws/session.rs")
        if re.search(r'json!\(\s*\{\s*"type"', src):
            failures.append(f"{rel}: a server message built with json! (use ServerMessage)")
    for path in rust_files("actors/src"):
        src = non_test(open(path, encoding="utf-8").read())
        for io in ("tokio_postgres", "deadpool_postgres", "fred::", "actix_web::"):
            if io in src:
                failures.append(f"{os.path.relpath(path, ROOT)}: the core uses {io}")
    for f in failures:
        print(f"architecture: {f}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print("architecture: no import cycles; layers, SQL and socket module as documented")


if __name__ == "__main__":
    main()
