#!/usr/bin/env python3
"""Fails when the top-level modules of a crate's src/ import each other in a circle.

An edge a -> b is any `crate::b` path in module a's code, including the top-level names of a
`crate::{…}` group (comments, inline `#[cfg(test)] mod tests { … }` blocks and test files
excluded). Run on each crate named; prints the circles found.
Usage: scripts/module-cycles.py server/src runtime/src
"""
import os
import re
import sys


def group_heads(src, start):
    """The first name of each top-level item of the `{…}` group opened just before `start`."""
    depth, item, heads = 0, "", []
    for ch in src[start:]:
        if ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0:
            heads.append(item)
            item = ""
            continue
        if depth == 0:
            item += ch
    heads.append(item)
    names = []
    for h in heads:
        m = re.match(r"\s*([a-z_]+)", h)
        if m:
            names.append(m.group(1))
    return names


def graph(root):
    mods = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            top = os.path.relpath(path, root).split(os.sep)[0].removesuffix(".rs")
            if top in ("lib", "main"):
                continue
            mods.setdefault(top, []).append(path)
    edges = {m: set() for m in mods}
    for m, paths in mods.items():
        for path in paths:
            name = os.path.basename(path)
            if name == "tests.rs" or name.endswith("_tests.rs"):
                continue
            # An inline test module runs to the end of its file (house style); a `mod tests;`
            # declaration is only a line.
            src = re.split(r"#\[cfg\(test\)\]\s*mod tests\s*\{", open(path).read())[0]
            src = "\n".join(l for l in src.split("\n") if not l.strip().startswith("//"))
            targets = re.findall(r"crate::([a-z_]+)", src)
            for start in [g.end() for g in re.finditer(r"crate::\{", src)]:
                targets.extend(group_heads(src, start))
            for target in targets:
                if target in mods and target != m:
                    edges[m].add(target)
    return edges


def circles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

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
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


failed = False
for root in sys.argv[1:]:
    found = circles(graph(root))
    if found:
        failed = True
        for c in found:
            print(f"{root}: modules import each other in a circle: {' -> '.join(c)}")
    else:
        print(f"{root}: no import circle between top-level modules")
sys.exit(1 if failed else 0)
