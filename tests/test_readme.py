"""The README's Python snippet runs as written, and its commands exist."""
import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_the_python_snippet_runs_as_written(capsys):
    (snippet,) = re.findall(r"```python\n(.*?)```", README, re.S)[:1]
    exec(compile(snippet, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("The for statement") and "max = " in out


def test_the_commands_it_names_exist():
    from smallmind_torch.cli.core import COMMANDS

    named = set(re.findall(r"^smallmind ([a-z-]+)", README, re.M))
    assert named and named <= set(COMMANDS), named - set(COMMANDS)
    for target in re.findall(r"^make ([a-z]+)", README, re.M):
        assert f"\n{target}:" in (Path(__file__).resolve().parents[1] / "Makefile").read_text()


def test_every_result_row_it_quotes_is_the_reports():
    """README quotes results/REPORT.md's tables; a quoted row that differs from the report's is
    a second truth (one of them stale)."""
    report = (Path(__file__).resolve().parents[1] / "results" / "REPORT.md").read_text(encoding="utf-8")
    report_rows = {line for line in report.splitlines() if line.startswith("| ")}
    quoted = [line for line in README.splitlines() if re.match(
        r"\| (reference|phase\d|compiled|max|max-int8|int8 \(|w8a8 \(|bf16 \(|fp32 \(|smallmind |"
        r"ONNX Runtime|CTranslate2|HF )", line)]
    assert quoted
    assert [line for line in quoted if line not in report_rows] == []
