"""The per-phase experiment scripts (experiments/*.py over cli/experiment.py): each shows its step's
gain (its preset, the phase before it and reference, with "x previous" and "x reference"), and
refuses a bad input in one line with the command line's exit code."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import load_experiment
from smallmind_torch import cli
from smallmind_torch.cli.experiment import STEP_BEFORE

FAST = ["--tiny", "--threads", "1", "--no-progress", "--no-profile", "--runs", "1"]


def _gain_table(out: str) -> dict:
    """phase -> (x previous, x reference) of the step's table the script printed last."""
    table = out[out.index("\nthe step "):].splitlines()[2:]
    rows = {}
    for line in table:
        cells = line.split()
        if cells and re.fullmatch(r"(-|\d+\.\d\dx)", cells[-2]):
            rows[cells[0]] = (cells[-2], cells[-1])
    return rows


def test_the_steps_go_from_reference_to_max():
    chain, name = ["max"], "max"
    while name in STEP_BEFORE:
        name = STEP_BEFORE[name]
        chain.append(name)
    assert chain[::-1] == ["reference", "phase0", "phase1", "phase2", "phase3", "max"]
    for script, preset in (("phase0_baseline", "phase0"), ("phase1_batched_attention", "phase1"),
                           ("phase2_kv_cache_custom_ops", "phase2"), ("phase3_fused_ops", "phase3"),
                           ("max_fastest", "max"), ("reference", "reference")):
        assert load_experiment(script).PRESET == preset


def test_a_phase_script_prints_its_preset_the_previous_phase_and_reference(capsys):
    assert load_experiment("phase1_batched_attention").main(FAST) == 0
    out = capsys.readouterr().out
    assert "the step phase0 -> phase1" in out and "alternating run by run" in out
    header = out[out.index("\nthe step "):].splitlines()[2]
    assert "x previous" in header and "x reference" in header
    rows = _gain_table(out)
    assert list(rows) == ["reference", "phase0", "phase1"]
    assert rows["reference"] == ("-", "1.00x")
    assert rows["phase0"][0] == "-" and rows["phase0"][1].endswith("x")
    assert rows["phase1"][0].endswith("x") and rows["phase1"][0] != "-"
    # the study's table beside it holds the three too, each checked
    for name in ("reference", "phase0", "phase1"):
        assert re.search(rf"^{name} .* ok \(max diff", out, re.M)


def test_the_reference_script_has_no_previous_phase(capsys):
    assert load_experiment("reference").main(FAST) == 0
    out = capsys.readouterr().out
    assert "the step - -> reference" in out
    assert _gain_table(out) == {"reference": ("-", "1.00x")}


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--runs", "0"], "--runs must be >= 1, got 0"),
    (["--new-tokens", "0"], "--new-tokens must be >= 1, got 0"),
    (["--checkpoint", "{tmp}/none"], "no checkpoint at"),
    (["--checkpoint", "{tmp}"], "is not a checkpoint"),
])
def test_a_bad_input_is_one_line_with_the_command_lines_exit_code(args, message, tmp_path, capsys):
    args = [a.format(tmp=tmp_path) for a in args]
    code = load_experiment("phase2_kv_cache_custom_ops").main(["--tiny", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("smallmind: error: ") and message in err[-1]
    assert not [line for line in err if "Traceback" in line or line.startswith("  File ")]
    # `smallmind bench` gives the same argument the same code: 2 for a usage error, 1 for a
    # checkpoint that cannot be read (cli/core.py)
    assert code == cli.main(["bench", "--tiny", *args]) == (1 if "checkpoint" in message else 2)
    assert message in capsys.readouterr().err


def test_run_as_a_script_a_bad_input_is_one_line():
    script = Path(__file__).resolve().parents[1] / "experiments" / "phase3_fused_ops.py"
    done = subprocess.run([sys.executable, str(script), "--tiny", "--runs", "0"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "smallmind: error: --runs must be >= 1, got 0"
    assert done.stdout == ""


def test_python_per_token_times_the_same_steps_five_ways(capsys):
    """experiments/python_per_token.py: one row per path, each read against the C++ loop."""
    script = load_experiment("python_per_token")
    assert script.main(["--shape", "tiny", "--tokens", "4", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "tiny shape, 1 thread(s), 4 greedy steps after a 16-token prompt" in out
    for path in ("C++ loop", "held step", "op, ~60 tensors", "generate_stream", "generate"):
        assert any(line.startswith(path + " ") for line in out.splitlines()), path
    with pytest.raises(SystemExit):
        script.main(["--shape", "tiny", "--tokens", "16"])  # the cache holds 32 positions
    assert "--tokens must lie in [1, 15]" in capsys.readouterr().err
