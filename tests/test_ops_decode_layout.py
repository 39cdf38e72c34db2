"""The fused decode's parameter layout (smallmind_torch/decode_layout.py): one table, rendered
into csrc/decode_layout.h for the C++ side, and the shapes of a model Block."""
import subprocess
import sys
from pathlib import Path

from smallmind_torch import GPT, ModelConfig, decode_layout, fused_decode

REPO = Path(__file__).resolve().parents[1]
HEADER = REPO / "smallmind_torch" / "csrc" / "decode_layout.h"


def test_committed_header_is_the_rendered_one():
    assert HEADER.read_text() == decode_layout.render_header(), (
        "csrc/decode_layout.h is stale: run `python smallmind_torch/decode_layout.py > "
        "smallmind_torch/csrc/decode_layout.h`")


def test_the_header_command_runs_without_the_package():
    first_line = HEADER.read_text().splitlines()[0]
    assert "python smallmind_torch/decode_layout.py > smallmind_torch/csrc/decode_layout.h" \
        in first_line
    done = subprocess.run([sys.executable, "-I", "smallmind_torch/decode_layout.py"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == decode_layout.render_header()


def test_the_table_is_a_gpt2_block():
    """Names in a Block's own order, each shape in units of C, the matrices' positions."""
    C = 24
    block = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=C, vocab_size=16,
                            block_size=8)).transformer.h[0]
    named = dict(block.named_parameters())
    assert decode_layout.BLOCK_PARAMS == tuple(named)
    for i, name in enumerate(decode_layout.BLOCK_PARAMS):
        assert tuple(named[name].shape) == decode_layout.param_shape(i, C), name
    assert decode_layout.Q8_PARAMS == (2, 4, 8, 10)
    assert [decode_layout.cpp_name(n) for n in decode_layout.BLOCK_PARAMS] == [
        "ln_1_w", "ln_1_b", "c_attn_w", "c_attn_b", "attn_c_proj_w", "attn_c_proj_b",
        "ln_2_w", "ln_2_b", "c_fc_w", "c_fc_b", "mlp_c_proj_w", "mlp_c_proj_b"]


def test_fused_decode_packs_in_the_same_order():
    assert fused_decode.BLOCK_PARAMS is decode_layout.BLOCK_PARAMS  # one table, not a copy
    assert fused_decode.Q8_PARAMS is decode_layout.Q8_PARAMS
