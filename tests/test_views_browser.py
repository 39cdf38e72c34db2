"""A written flame graph opens in a real browser from disk, with no network, and draws its frames:
headless Chromium (skipped where `chromium` is not on PATH; Debian: apt-get install chromium)
loads flame.html from file:// and dumps the DOM the page's script built."""
import re
import shutil
import subprocess

import pytest
import torch

from smallmind_torch import GPT
from smallmind_torch.study.measure import traces

from helpers import TINY

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH")


def chromium(*args, timeout=60) -> str:
    """Headless Chromium with the network shut off: every host resolves to nowhere, so a page
    that fetched anything would draw nothing."""
    result = subprocess.run(
        [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    try:
        result = traces.write_traces(GPT(TINY).eval(), "phase1", tmp_path_factory.mktemp("runs"),
                                     prompt_len=4)
    finally:
        torch.set_num_threads(old)
    return next(p for p in result.pictures if p.endswith(".flame.html"))


def test_flame_graph_draws_offline(page):
    dom = chromium("--dump-dom", f"file://{page}")
    frames = re.findall(r'<g [^>]*class="frame[^"]*"[^>]*>\s*<rect', dom)
    names = set(re.findall(r'<g [^>]*name="([^"]+)"', dom))
    print(f"{len(frames)} frames drawn, e.g. {sorted(names)[:8]}")
    assert len(frames) >= 20  # SVG rects, one per frame, built by the inlined d3-flame-graph
    assert {"generation.py:generate_stream", "linear"} <= names
    assert any(n.startswith("aten::") for n in names)  # the ATen ops as frames
    assert 'id="search"' in dom
