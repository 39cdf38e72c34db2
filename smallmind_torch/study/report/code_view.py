"""Code side by side, for the notebooks: listings taken from the package's own sources by name
(a Python function or method, a C++ function of csrc/) and two columns of them rendered as HTML.

The columns are a CSS flexbox, not a table: JupyterLab and nbconvert right-align table cells, which
right-justifies every line of code and loses its indentation. Each listing is a left-aligned
`<pre>` (pygments-highlighted where pygments is installed, as it is with IPython; inline styles) that scrolls
sideways instead of wrapping a long line mid-expression.

    python_function(path, qualname) -> str     a def (or a class's method) through its last line
    cpp_function(path, name) -> str            a C++ definition through its matching brace
    call_line(path, qualname, contains) -> str the line of a function that calls the C++ op
    Listing                                    a caption, the code, its language
    side_by_side_html(title, left, right, ...) the HTML of two columns of listings
"""
from __future__ import annotations

import ast
import html
import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2]  # smallmind_torch/
CSRC = PACKAGE / "csrc"


def _source_path(path: "str | Path") -> Path:
    """A path relative to the package (e.g. "attention.py", "csrc/softmax.cpp"), or absolute."""
    path = Path(path)
    return path if path.is_absolute() else PACKAGE / path


def python_function(path: "str | Path", qualname: str) -> str:
    """The source of `qualname` ("name" or "Class.name") in the Python file `path`, decorators
    and comments inside it included, dedented; KeyError if the file defines no such function."""
    text = _source_path(path).read_text(encoding="utf-8")
    node = ast.parse(text)
    for part in qualname.split("."):
        found = [n for n in getattr(node, "body", [])
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 and n.name == part]
        if not found:
            raise KeyError(f"{path} defines no {qualname!r}")
        node = found[0]
    lines = text.splitlines()
    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
    block = lines[first - 1:node.end_lineno]
    indent = len(block[0]) - len(block[0].lstrip())
    return "\n".join(line[indent:] for line in block)


def call_line(path: "str | Path", qualname: str, contains: str) -> str:
    """The first line of `qualname` in `path` holding `contains` (e.g. the call of a C++ op),
    stripped; KeyError if there is none."""
    for line in python_function(path, qualname).splitlines():
        if contains in line:
            return line.strip()
    raise KeyError(f"{qualname} in {path} has no line with {contains!r}")


# comments and string / char literals of C++, which may hold any bracket
_CPP_SKIP = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def _blank_comments_and_strings(text: str) -> str:
    """`text` with comments and string / char literals blanked (same length, newlines kept), so
    that the braces and parentheses left are the code's."""
    return _CPP_SKIP.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)


def _matching(code: str, start: int, open_: str, close: str) -> int:
    """The index of the bracket closing the one at `start` in `code` (comments blanked)."""
    depth = 0
    for i in range(start, len(code)):
        if code[i] == open_:
            depth += 1
        elif code[i] == close:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {open_}{close} from offset {start}")


def cpp_function(path: "str | Path", name: str) -> str:
    """The definition of the C++ function `name` in `path` (relative to smallmind_torch/, e.g.
    "csrc/softmax.cpp"): the comment lines right above it, its head, and its body through the
    matching closing brace. The first definition wins (a name defined once per `#if` branch);
    a declaration or a call is not a definition. KeyError if there is none."""
    text = _source_path(path).read_text(encoding="utf-8")
    code = _blank_comments_and_strings(text)
    for m in re.finditer(rf"\b{re.escape(name)}\s*\(", code):
        close = _matching(code, m.end() - 1, "(", ")")
        after = re.match(r"[\s\w:&*<>,]*?\{", code[close + 1:])  # const, noexcept, -> T ...
        if after is None:
            continue  # a call or a declaration
        brace = close + after.end()
        end = _matching(code, brace, "{", "}")
        lines = text[:end + 1].splitlines()
        head = text.count("\n", 0, m.start())  # the line of the name
        while head > 0 and lines[head - 1].lstrip().startswith(("template", "//")):
            head -= 1  # its template line and the comment that says what it is
        return "\n".join(lines[head:])
    raise KeyError(f"{path} defines no C++ function {name!r}")


@dataclass(frozen=True)
class Listing:
    """One block of code under its caption (e.g. "attention.py: softmax_naive"); `note`: a
    line under the caption (e.g. how Python calls a C++ kernel)."""

    caption: str
    code: str
    language: str = "python"
    note: str = ""


def python_listing(path: str, qualname: str, note: str = "") -> Listing:
    return Listing(f"smallmind_torch/{path}: {qualname}", python_function(path, qualname), "python", note)


def cpp_listing(path: str, name: str, note: str = "") -> Listing:
    return Listing(f"smallmind_torch/{path}: {name}", cpp_function(path, name), "cpp", note)


# Inline styles only: an untrusted notebook's HTML loses its <style> blocks in JupyterLab, but
# keeps the style attributes. Two flex columns; code left-aligned, kept as written, scrolling.
_PAIR = "display:flex;flex-direction:row;gap:12px;align-items:flex-start;text-align:left"
_COLUMN = "flex:1 1 0;min-width:0;text-align:left"
_HEAD = "font-weight:bold;margin:4px 0;text-align:left"
_CAPTION = "font-family:monospace;font-size:11px;color:#555;margin:6px 0 2px 0;text-align:left"
_NOTE = "font-family:monospace;font-size:11px;color:#060;margin:0 0 2px 0;text-align:left"
_CODE = ("text-align:left;white-space:pre;overflow-x:auto;font-size:11px;line-height:1.3;"
         "margin:0;padding:6px;background:#f7f7f7;border:1px solid #ddd")


def highlight(code: str, language: str) -> str:
    """`code` as a left-aligned HTML <pre>, highlighted by pygments where it is installed."""
    try:
        from pygments import highlight as pygments_highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import get_lexer_by_name
    except ImportError:  # plain text: escaped, still left-aligned and indented
        return f"<pre style='{_CODE}'>{html.escape(code)}</pre>"
    formatter = HtmlFormatter(noclasses=True, nowrap=True, style="default")
    body = pygments_highlight(code, get_lexer_by_name(language), formatter)
    return f"<pre style='{_CODE}'>{body}</pre>"


def _column(head: str, listings) -> str:
    parts = [f"<div style='{_COLUMN}'><div style='{_HEAD}'>{html.escape(head)}</div>"]
    for listing in listings:
        parts.append(f"<div style='{_CAPTION}'>{html.escape(listing.caption)}</div>")
        if listing.note:
            parts.append(f"<div style='{_NOTE}'>{html.escape(listing.note)}</div>")
        parts.append(highlight(listing.code, listing.language))
    return "".join(parts) + "</div>"


def side_by_side_html(title: str, left, right, left_head: str = "naive (phase 0)",
                      right_head: str = "fast") -> str:
    """Two columns of listings (each a Listing or a list of them) under `title`, as HTML."""
    left = [left] if isinstance(left, Listing) else list(left)
    right = [right] if isinstance(right, Listing) else list(right)
    return (f"<div style='text-align:left'><h4 style='text-align:left'>{html.escape(title)}</h4>"
            f"<div style='{_PAIR}'>{_column(left_head, left)}{_column(right_head, right)}"
            "</div></div>")
