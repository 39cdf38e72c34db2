"""Notebook 02's code side by side: every switch has a pair, every listing is found in the sources
by name (a C++ one is a whole, balanced definition), and the HTML keeps code left-aligned and
indented (no table, whose cells JupyterLab and nbconvert right-align)."""
import html
import re

import pytest

from smallmind_torch.config import FORMS
from smallmind_torch.study.report.code_view import (Listing, cpp_function, python_function,
                                                    side_by_side_html)
from smallmind_torch.study.report.switch_code import SWITCHES, listing, switch_html

SOURCES = [s for _, left, right in SWITCHES.values() for s in (*left, *right)]
CPP = [s for s in SOURCES if s[0] == "cpp"]


def _blank(code: str) -> str:
    """C++ without comments and literals, whose brackets do not count."""
    return re.sub(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', "", code,
                  flags=re.S)


def test_every_switch_of_optconfig_has_its_pair():
    assert list(SWITCHES) != [] and set(SWITCHES) == set(FORMS)
    assert all(left and right for _, left, right in SWITCHES.values())


@pytest.mark.parametrize("source", CPP, ids=lambda s: s[2])
def test_each_cpp_kernel_is_a_whole_balanced_definition(source):
    _, path, name, call = source
    code = _blank(cpp_function(path, name))
    head = code.index("{")
    assert re.search(rf"\b{name}\s*\(", code[:head]), "the definition's head names the function"
    depth = 0
    for i, ch in enumerate(code[head:], head):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth > 0 or i == len(code.rstrip()) - 1, "the block closes only at its end"
    assert depth == 0 and code.rstrip().endswith("}")
    if call is not None:  # the Python line under which it is shown calls a C++ op
        assert "op" in listing(source).note


@pytest.mark.parametrize("source", [s for s in SOURCES if s[0] == "py"], ids=lambda s: s[2])
def test_each_python_form_is_found_whole(source):
    code = python_function(source[1], source[2])
    name = source[2].rpartition(".")[2]
    assert code.startswith(f"def {name}(") or code.startswith("@")
    compile(code, source[2], "exec")  # a whole definition, dedented


def test_a_call_or_a_missing_name_is_not_a_definition():
    with pytest.raises(KeyError):  # called in decode_kernel.h, defined in another header
        cpp_function("csrc/decode_kernel.h", "layer_norm_rows")
    with pytest.raises(KeyError):
        cpp_function("csrc/softmax.cpp", "no_such_function")
    with pytest.raises(KeyError):
        python_function("attention.py", "GPT.no_such_method")
    # the decode step's per-layer loop, which calls block_layer, is found by its own name
    assert "block_layer(d, s.layers[l]" in cpp_function("csrc/decode_kernel.h", "decode_step")


def _visible_text(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def test_the_html_is_two_left_aligned_columns_with_the_indentation_kept():
    markup = switch_html("attention_scores")
    assert "<table" not in markup and "<td" not in markup and "<style" not in markup
    assert "display:flex" in markup
    pres = re.findall(r"<pre style='([^']*)'", markup)
    assert len(pres) == 2
    assert all("text-align:left" in s and "white-space:pre" in s and "overflow-x:auto" in s
               for s in pres)
    text = _visible_text(markup)
    for line in python_function("attention.py", "attention_scores_naive").splitlines():
        assert line in text  # every line, with its leading spaces
    assert "    for i in range(Tq):\n        for j in range(q_offset + i + 1):" in text
    assert "naive (phase 0)" in text and "fast" in text


def test_the_fused_decode_pair_shows_the_cpp_per_layer_loop_under_its_call():
    text = _visible_text(switch_html("fused_decode"))
    assert "static inline void block_layer(" in text and "layer_gemv(layer, 3," in text
    assert "called as self.step_op(tokens, start" in text
    assert "decode_block_reference" not in text  # not the PyTorch reference of the op


def test_without_pygments_the_code_is_escaped_and_still_left_aligned(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pygments(name, *args, **kwargs):
        if name.startswith("pygments"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pygments)
    code = "if a < b:\n    x = '<&>'"
    markup = side_by_side_html("t", Listing("left", code), [Listing("r", code, "cpp", "note")])
    assert "text-align:left" in markup and "&lt;&amp;&gt;" in markup
    assert _visible_text(markup).count(code) == 2
