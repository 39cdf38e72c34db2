"""Interactive flame graphs of a trace's call stacks, one self-contained HTML file each.

- `clean_stacks(stacks)`: {stack: self microseconds} with the profiler's frame names -> the
  generation's stacks only, with short names (`frame_name`: no memory addresses);
- `read_folded(path)`: a folded-stacks file ("frame;frame;...;leaf value" per line, the format
  of flamegraph.pl, `prof.export_stacks` and `write_folded`) -> clean_stacks of it;
- `write_folded(stacks, path)`: the same format, back to a file;
- `write_flame_graph(stacks, path, title, baseline=None, per=1)`: the page, drawn in the browser
  by d3-flame-graph (vendored with the d3 modules it needs under smallmind_torch/assets/
  flamegraph/, see its README) inlined into the page, so it opens from disk with no network.
  Hover shows a frame's time and share, click zooms, the search box highlights. With a
  `baseline`: a differential flame graph, coloured by how much each frame grew or shrank.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

from ...labels import CATEGORIES

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "flamegraph"
# load order: each d3 module adds itself to the global `d3` that the ones after it read
SCRIPTS = ("internmap", "d3-array", "d3-color", "d3-interpolate", "d3-dispatch", "d3-ease",
           "d3-format", "d3-time", "d3-time-format", "d3-scale", "d3-selection", "d3-timer",
           "d3-transition", "d3-hierarchy", "d3-flame-graph")
STYLES = ("d3-flame-graph",)

FOCUS = "generate_stream"  # the generation's frame: stacks not through it are not the model's
# the profiler's own work (record_function's enter/exit, its bookkeeping), absent unprofiled
PROFILER_FRAMES = re.compile(r"torch/autograd/profiler|torch/profiler/|^profiler::")
_BUILTIN = re.compile(r"^<built-in[ _](?P<kind>method|function)[ _](?P<name>.*?)"
                      r"(?:[ _]of[ _].*[ _]object[ _]at[ _]0x[0-9a-fA-F]+)?>$")
_PYTHON = re.compile(r"^(?P<file>.+)\((?P<line>\d+)\):[ _]?(?P<func>.*)$")
_ADDRESS = re.compile(r"[ _]at[ _]0x[0-9a-fA-F]+")
_FOLDED_TRANSLATE = str.maketrans(";\t\n", "___")  # no separator inside a frame's name


def frame_name(raw: str) -> str:
    """A frame as the profiler names it -> a short name with no memory address:
    '<built-in_method_addmm_of_type_object_at_0x7f..>' -> 'built-in method addmm',
    'torch/nn/modules/module.py(1778):__call_impl' -> 'module.py:_call_impl'; ops
    ('aten::addmm', 'smallmind::...') and profiler labels unchanged."""
    match = _BUILTIN.match(raw)
    if match:
        return f"built-in {match['kind']} {match['name']}".rstrip()
    match = _PYTHON.match(raw)
    if match:
        return f"{match['file'].rsplit('/', 1)[-1]}:{match['func']}"
    return _ADDRESS.sub("", raw)


def clean_stacks(stacks: dict, focus: str = FOCUS) -> dict:
    """{stack: value} with frames as the profiler names them -> the stacks through the
    generation (a frame whose function is `focus`), each cut to start at it, frame names
    cleaned (frame_name); stacks through the profiler's own frames, and other threads' (which
    never pass through `focus`), are dropped. Stacks that clean to the same names merge."""
    clean: dict = {}
    for stack, value in stacks.items():
        raw = stack.split(";")
        if not stack or any(PROFILER_FRAMES.search(f) for f in raw):
            continue
        names = [frame_name(f) for f in raw]
        start = next((i for i, n in enumerate(names) if n.rpartition(":")[2] == focus), None)
        if start is not None:
            key = ";".join(names[start:])
            clean[key] = clean.get(key, 0.0) + value
    return clean


def read_folded(path) -> dict:
    """A folded-stacks file ("frame;...;leaf value" lines: write_folded's, export_stacks') ->
    {"frame;frame;...;leaf": self microseconds}, cleaned by clean_stacks."""
    stacks: dict = {}
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, value = line.rpartition(" ")
        try:
            stacks[stack] = stacks.get(stack, 0.0) + float(value)
        except ValueError:
            continue
    return clean_stacks(stacks)


PYTHON_FRAME = "Python"  # logical_stacks' name for the time of Python frames


def logical_stacks(stacks: dict) -> dict:
    """The stacks of the profiler labels and ops alone: Python frames are dropped, and the self
    time of a stack that ends in one goes to a PYTHON_FRAME under the innermost label or op
    around it. Two phases whose Python differs (phase1's forward_last, max's decode_greedy)
    then share their frames, so that a differential graph compares like with like: `linear`
    against `linear`, `aten::addmm` against `smallmind::linear_out` beneath it."""
    logical: dict = {}
    for stack, us in stacks.items():
        frames = stack.split(";")
        kept = [f for f in frames if _kind(f) != "python"]
        if _kind(frames[-1]) == "python":
            kept.append(PYTHON_FRAME)
        key = ";".join(kept)
        logical[key] = logical.get(key, 0.0) + us
    return logical


def write_folded(stacks: dict, path) -> str:
    """One line per stack, "frame;frame;...;leaf <self microseconds>", whole microseconds as
    flamegraph.pl, inferno and speedscope read them (stacks under half a microsecond left out);
    they split a line at its last space, so frame names keep theirs."""
    lines = [f"{';'.join(f.translate(_FOLDED_TRANSLATE) for f in stack.split(';'))} {round(us)}"
             for stack, us in stacks.items() if round(us) > 0]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _kind(name: str) -> str:
    """d3-flame-graph's libtype, which picks the hue: ops yellow, labels green, Python red."""
    if "::" in name:
        return "op"
    return "jit" if name in CATEGORIES else "python"


def _tree(stacks: dict, baseline: "dict | None", per: int) -> dict:
    """Nested {"name", "value" (ms, inclusive), "before", "children"} over both profiles."""
    root = {"name": "all", "value": 0.0, "before": 0.0, "children": {}}
    for source, field in ((stacks, "value"), (baseline or {}, "before")):
        for stack, us in source.items():
            ms = us / 1e3 / per
            node = root
            root[field] += ms
            for frame in stack.split(";"):
                node = node["children"].setdefault(
                    frame, {"name": frame, "value": 0.0, "before": 0.0, "children": {},
                            "l": _kind(frame)})
                node[field] += ms
    return root


def change(after: float, before: float) -> float:
    """How much a frame grew (> 0, up to 1: new) or shrank (< 0, down to -1: gone), relative to
    the larger of its two times; what the differential graph's colours show."""
    larger = max(after, before)
    return (after - before) / larger if larger > 0 else 0.0


def _as_chart(node: dict, field: str) -> "dict | None":
    """The d3-flame-graph node of one side: sized by `field`; frames at 0 on it left out."""
    if node[field] <= 0:
        return None
    children = [c for c in (_as_chart(n, field) for n in node["children"].values()) if c]
    return {"name": node["name"], "value": node[field], "after": node["value"],
            "before": node["before"], "change": change(node["value"], node["before"]),
            "l": node.get("l", ""), "children": sorted(children, key=lambda c: -c["value"])}


def _script(text: str) -> str:
    """`text` safe inside a <script> element: nothing in it may close the element (in JS
    strings and JSON, "<\\/" is "</")."""
    return re.sub(r"</(script)", r"<\\/\1", text, flags=re.IGNORECASE)


LEGEND = ("Each box is a frame: a Python function (red), a profiler label (green) or an op "
          "(ATen <code>aten::</code> or our C++ <code>smallmind::</code>, yellow), as wide as the "
          "time spent in it and in what it calls, its callers above it. Hover for the time, "
          "click to zoom in (click the top box to zoom out), search to highlight.")
DIFF_LEGEND = ("Differential: <b>red</b> frames take more time than in the baseline, "
               "<b>blue</b> ones less (the deeper the colour, the larger the change relative "
               "to the frame), grey about the same. The first graph is sized by this profile, "
               "so a frame that is new here is deep red; the second is the baseline, sized by "
               "its own times, so a frame that is gone (0 ms here) shows there in deep blue. "
               "Hover shows both times and the change.")

PAGE_SCRIPT = """
const PAGE = __PAGE__;
const fmt = v => Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(2);
function describe(d, total) {
  const n = d.data, share = total > 0 ? 100 * n.value / total : 0;
  let text = n.name + "\\n" + fmt(n.value) + " " + PAGE.unit + " (" + share.toFixed(1) + " % of the total)";
  if (PAGE.diff) {
    const delta = n.after - n.before, rel = n.before > 0 ? " (" + (delta >= 0 ? "+" : "") + (100 * delta / n.before).toFixed(0) + " %)" : " (new)";
    text = n.name + "\\nthis profile: " + fmt(n.after) + " " + PAGE.unit + "\\nbaseline: " + fmt(n.before) + " " + PAGE.unit
         + "\\nchange: " + (delta >= 0 ? "+" : "") + fmt(delta) + " " + PAGE.unit + rel;
  }
  return text;
}
function diffColour(n) {
  const k = Math.abs(n.change), fade = Math.round(220 * (1 - k));
  if (k < 0.02) return "rgb(220,220,220)";
  return n.change > 0 ? "rgb(240," + fade + "," + fade + ")" : "rgb(" + fade + "," + fade + ",240)";
}
const charts = PAGE.charts.map(spec => {
  const total = spec.root.value;
  const tip = flamegraph.tooltip.defaultFlamegraphTooltip().text(d => describe(d, total));
  const chart = flamegraph.default()
    .width(Math.max(600, document.body.clientWidth - 20)).cellHeight(18).inverted(true)
    .tooltip(tip).minFrameSize(0)
    .setLabelHandler(d => describe(d, total).replace(/\\n/g, "; "))
    .setDetailsElement(document.getElementById("details"))
    .setSearchMatch((d, term) => !!term && d.data.name.toLowerCase().includes(term.toLowerCase()))
    .setSearchHandler((found, sum, all) => {
      document.getElementById("details").textContent = "search: " + found.length + " frames, "
        + fmt(sum) + " " + PAGE.unit + " (" + (all > 0 ? 100 * sum / all : 0).toFixed(1) + " % of the total)";
    });
  if (PAGE.diff) chart.setColorMapper((d, original) => d.highlight ? original : diffColour(d.data));
  d3.select("#" + spec.id).datum(spec.root).call(chart);
  return chart;
});
document.getElementById("search").addEventListener("input", e => {
  charts.forEach(c => e.target.value ? c.search(e.target.value) : c.clear());
});
document.getElementById("reset").addEventListener("click", () => charts.forEach(c => c.resetZoom()));
"""


def write_flame_graph(stacks: dict, path, title: str, *, baseline: "dict | None" = None,
                      per: int = 1) -> str:
    """The flame graph of `stacks` ({stack: self microseconds}, as read_folded returns) as one
    HTML file with the viewer inlined; times in ms divided by `per` (the tooltip says "ms per
    token" when per > 1). With `baseline`: the differential graph of `stacks` against it."""
    if per < 1:
        raise ValueError(f"per must be a positive number of tokens, got {per}")
    unit = "ms per token" if per > 1 else "ms"
    tree = _tree(stacks, baseline, per)
    charts = [("flame", "this profile" if baseline is not None else "", _as_chart(tree, "value"))]
    if baseline is not None:
        charts.append(("baseline", "the baseline (frames gone from this profile in deep blue)",
                       _as_chart(tree, "before")))
    charts = [(i, h, root) for i, h, root in charts if root]
    page = {"unit": unit, "diff": baseline is not None,
            "charts": [{"id": i, "root": root} for i, _, root in charts]}
    total = f"{tree['value']:.3g} {unit}" + (f" (baseline {tree['before']:.3g})" if baseline is not None else "")
    sections = "".join((f"<h2>{html.escape(h)}</h2>" if h else "") + f'<div id="{i}"></div>'
                       for i, h, _ in charts) or "<p>No call stacks of the generation.</p>"
    scripts = "".join(f"<script>{_script((ASSETS / f'{s}.min.js').read_text(encoding='utf-8'))}</script>\n"
                      for s in SCRIPTS)
    page_script = _script(PAGE_SCRIPT.replace("__PAGE__", json.dumps(page)))
    css = "".join((ASSETS / f"{s}.css").read_text(encoding="utf-8") for s in STYLES)
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{css}
body {{ font-family: sans-serif; margin: 10px; }} h1 {{ font-size: 18px; }} h2 {{ font-size: 15px; }}
.legend {{ max-width: 70em; font-size: 13px; color: #333; }}
.bar {{ margin: 8px 0; font-size: 13px; }} #details {{ margin-left: 1em; color: #333; }}
.d3-flame-graph-tip {{ white-space: pre-line; font-size: 12px; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="legend">Total {html.escape(total)}. {LEGEND}{" " + DIFF_LEGEND if baseline is not None else ""}</p>
<div class="bar"><input id="search" type="search" placeholder="search frames" size="30">
<button id="reset">reset zoom</button><span id="details"></span></div>
{sections}
{scripts}<script>{page_script}</script>
</body></html>
"""
    Path(path).write_text(text, encoding="utf-8")
    return str(path)
