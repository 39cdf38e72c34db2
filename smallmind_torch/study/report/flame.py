"""Flame graphs of folded call stacks as one offline HTML file.

PLACEHOLDER: a minimal version of the interface (read_folded, write_flame_graph) so that the
phase diff can call it; the d3-flame-graph version replaces this module.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

_ADDRESS = re.compile(r"_at_0x[0-9a-f]+|\s+at\s+0x[0-9a-f]+")  # a Python object's id: differs run to run


def read_folded(path) -> "dict[str, float]":
    """A folded stacks file ("frame;frame;leaf value" lines) -> {"frame;...;leaf": value}, the
    frames without object addresses (so that two runs' stacks line up)."""
    stacks: dict = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, value = line.rpartition(" ")
        try:
            v = float(value)
        except ValueError:
            continue
        if stack:
            key = _ADDRESS.sub("", stack)
            stacks[key] = stacks.get(key, 0.0) + v
    return stacks


def write_flame_graph(stacks: "dict[str, float]", path, title: str, *,
                      baseline: "dict[str, float] | None" = None, per: int = 1) -> str:
    """One self-contained HTML file of `stacks` (values divided by `per`); with `baseline`,
    each frame also carries its baseline value (B against A)."""
    def tree(values):
        root = {"name": "all", "value": 0.0, "children": {}}
        for stack, v in values.items():
            node = root
            root["value"] += v / per
            for frame in stack.split(";"):
                node = node["children"].setdefault(frame, {"name": frame, "value": 0.0, "children": {}})
                node["value"] += v / per
        return root

    def plain(node):
        return {"name": node["name"], "value": node["value"],
                "children": [plain(c) for c in node["children"].values()]}

    data = {"title": title, "stacks": plain(tree(stacks)),
            "baseline": plain(tree(baseline)) if baseline is not None else None}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = html.escape(json.dumps(data))
    path.write_text(f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
                    f"</title></head><body><h1>{html.escape(title)}</h1>"
                    f"<pre id=\"data\">{body}</pre></body></html>\n", encoding="utf-8")
    return str(path)
