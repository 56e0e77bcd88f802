#!/usr/bin/env python3
"""Fails when modules of one crate use each other in a circle (a -> b -> a).

A module is a file under a crate's src/; an edge a -> b is a `crate::b` path in a's file (its
tests excluded: `#[cfg(test)] mod tests` may use anything). Run by scripts/test.sh."""
import pathlib
import re
import sys

root = pathlib.Path(__file__).resolve().parent.parent
crates = [p.parent for p in root.glob("**/Cargo.toml") if "target" not in p.parts and (p.parent / "src").is_dir()]
bad = []
for crate in crates:
    src = crate / "src"
    mods = {}
    for f in src.rglob("*.rs"):
        if "bin" in f.relative_to(src).parts:
            continue
        rel = f.relative_to(src).with_suffix("")
        parts = [p for p in rel.parts if p != "mod"]
        name = parts[0] if parts else "lib"
        text = f.read_text()
        cut = text.find("#[cfg(test)]\nmod tests")
        if cut >= 0:
            text = text[:cut]
        uses = set(re.findall(r"\bcrate::(\w+)", text))
        # `use crate::{a, b::c}` groups
        for g in re.findall(r"use crate::\{([^}]*)\}", text):
            uses |= {x.strip().split("::")[0] for x in g.split(",") if x.strip()}
        mods.setdefault(name, set()).update(u for u in uses if u != name)
    names = set(mods)
    graph = {m: {u for u in us if u in names and u not in ("lib", "main")} for m, us in mods.items()}
    # every cycle shows up as a back edge in a depth-first search
    state = {}
    def visit(m, path):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                bad.append(f"{crate.relative_to(root)}: " + " -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
if bad:
    print("module circles:\n  " + "\n  ".join(bad))
    sys.exit(1)
print(f"no module circles in {len(crates)} crates")
