"""The llama.cpp and torchao peers: the GGUF file holds our tensors and a vocabulary llama.cpp
loads (read back with gguf's own reader; gguf is in the test extra), llama.cpp's fp32 engine
gives reference's greedy tokens and its q8_0 / q4_0 engines generate on their quantized files
with the engine's thread count, torchao's engines run on linear layers made from HF's Conv1D,
and a peer whose package is missing is a "not installed" row naming the extra that installs it.
llama-cpp-python and torchao are optional extras: their tests skip without them. Tiny shapes,
in this process."""
import json

import numpy as np
import pytest
import torch

from smallmind_torch import GPT
from smallmind_torch.study.peers import bench as peer_bench
from smallmind_torch.study.peers import engines
from smallmind_torch.study.peers.base import save_weights
from smallmind_torch.study.report.peer_tables import format_case
from smallmind_torch.study.results import CaseResult, EngineRow
from smallmind_torch.train.tokenizer import DEFAULT_PATH

from helpers import TINY

PROMPTS, N = ([5, 1, 17, 3], [9, 30, 2, 44, 61, 7, 7, 12, 50, 3, 1]), 8


@pytest.fixture(scope="module")
def model():
    """Weights whose greedy tokens vary (random ones scaled up: unscaled, they repeat one token)."""
    torch.manual_seed(11)
    model = GPT(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model


@pytest.fixture(scope="module")
def weights(model, tmp_path_factory):
    return save_weights(model, tmp_path_factory.mktemp("weights") / "weights.pt")


@pytest.fixture(scope="module")
def references(model):
    refs = [peer_bench.reference_tokens(model, p, N) for p in PROMPTS]
    assert len(set(refs[0] + refs[1])) > 3  # not one repeated token
    return refs


# ---- the GGUF file -------------------------------------------------------------------------

@pytest.mark.parametrize("file_type", ["f32", "q8_0", "q4_0"])
def test_the_gguf_file_holds_our_tensors_and_vocabulary(model, tmp_path, file_type):
    gguf = pytest.importorskip("gguf")
    from smallmind_torch.study.peers.gguf_export import gguf_tensors, write_gguf

    path = write_gguf(model, tmp_path / "model.gguf", file_type)
    reader = gguf.GGUFReader(path)

    def field(key):
        return reader.fields[key].contents()

    c = model.config
    assert field("general.architecture") == "gpt2"
    assert [field(f"gpt2.{k}") for k in ("block_count", "context_length", "embedding_length",
                                         "feed_forward_length", "attention.head_count")] == \
        [c.n_layer, c.block_size, c.n_embd, 4 * c.n_embd, c.n_head]
    assert field("gpt2.attention.layer_norm_epsilon") == pytest.approx(c.layer_norm_epsilon)
    assert field("tokenizer.ggml.model") == "gpt2"
    assert len(field("tokenizer.ggml.tokens")) == c.vocab_size
    assert field("tokenizer.ggml.merges")

    ours = {name: value for name, value, _ in gguf_tensors(model)}
    read = {t.name: t for t in reader.tensors}
    assert set(read) == set(ours) and "output.weight" not in read  # the lm head is tied
    assert len(read) == 2 + 12 * c.n_layer + 2
    qtype = {"f32": "F32", "q8_0": "Q8_0", "q4_0": "Q4_0"}[file_type]
    for name, tensor in read.items():
        expected = ours[name]
        quantized = expected.ndim == 2 and name != "position_embd.weight"
        assert tensor.tensor_type.name == (qtype if quantized else "F32"), name
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(expected.shape)
        # per block of 32 (m: its largest |w|): q8_0 steps of m/127, off by half a step at most;
        # q4_0 steps of m/8 from -m to 7m/8, the clamped end a whole step off; the fp16 scale
        blocks = np.abs(expected).reshape(-1, 32 if quantized else 1).max(axis=1, keepdims=True)
        bound = {"F32": 0.0, "Q8_0": 1 / 254, "Q4_0": 1 / 8}[tensor.tensor_type.name]
        err = np.abs(values - expected).reshape(blocks.shape[0], -1)
        assert (err <= blocks * (bound + 1e-3) + 1e-7).all(), name
        if bound == 0.0:
            assert np.array_equal(values, expected), name


def test_the_vocabulary_is_the_tokenizers_spelled_for_llama_cpp():
    from smallmind_torch.study.peers.gguf_export import vocabulary

    data = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    tokens, types, merges = vocabulary(512)
    assert tokens == sorted(data["model"]["vocab"], key=data["model"]["vocab"].get)
    assert len(merges) == len(data["model"]["merges"]) and types[0] == 3 and set(types[1:]) == {1}
    tokens, types, merges = vocabulary(520)  # beyond the tokenizer: byte-level spelled extras
    assert tokens[512:] == [f"<extra{i}>" for i in range(512, 520)]
    assert all("!" <= ch <= "~" for t in tokens[512:] for ch in t)  # in the byte-level alphabet
    for size in (4, 64):  # a cut vocabulary keeps merges of its own tokens (at least one)
        tokens, _, merges = vocabulary(size)
        assert len(tokens) == size and merges
        assert all(part in tokens for merge in merges for part in merge.split(" "))
    with pytest.raises(ValueError, match="unknown GGUF file type 'q2'"):
        from smallmind_torch.study.peers.gguf_export import write_gguf

        write_gguf(None, "unused.gguf", "q2")


# ---- llama.cpp -----------------------------------------------------------------------------

def test_llama_cpp_engines_generate_on_their_gguf_files(weights, references, tmp_path):
    llama = pytest.importorskip("llama_cpp")
    for name, fmt in (("llama.cpp", "fp32"), ("llama.cpp-q8_0", "int8"), ("llama.cpp-q4_0", "int4")):
        assert engines.engine_weights(name) == fmt
        engine = engines.make_engine(name, 2)
        costs = engine.prepare(weights, tmp_path)
        assert costs["convert_s"] is not None and (tmp_path / "llama.cpp").is_dir()
        assert llama.llama_n_threads(engine.ctx) == llama.llama_n_threads_batch(engine.ctx) == 2
        for prompt, ref in zip(PROMPTS, references):
            for _ in range(2):  # a second generation starts from an empty cache again
                tokens, stamps = engine.generate(prompt, N)
                assert len(tokens) == len(stamps) == N and stamps == sorted(stamps)
                assert all(0 <= t < TINY.vocab_size for t in tokens)
                if fmt == "fp32":
                    assert tokens == ref
    again = engines.make_engine("llama.cpp", 1).prepare(weights, tmp_path)
    assert again["convert_s"] is None  # the file is written once per weights


def test_llama_cpp_reports_a_file_it_cannot_load(tmp_path):
    pytest.importorskip("llama_cpp")
    engine = engines.make_engine("llama.cpp", 1)
    (tmp_path / "llama.cpp").mkdir()
    (tmp_path / "llama.cpp" / "model.f32.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(RuntimeError, match="llama.cpp could not load model.f32.gguf"):
        engine.prepare(tmp_path / "unused.pt", tmp_path)


# ---- torchao -------------------------------------------------------------------------------

def test_linears_from_conv1d_compute_what_conv1d_did(model):
    pytest.importorskip("transformers")
    from smallmind_torch.study.peers.torchao_engine import linears_from_conv1d

    hf = model.to_hf()
    idx = torch.tensor([PROMPTS[1]])
    with torch.no_grad():
        before = hf(idx).logits
        assert linears_from_conv1d(hf) == 4 * TINY.n_layer
        after = hf(idx).logits
    assert isinstance(hf.transformer.h[0].attn.c_attn, torch.nn.Linear)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_torchao_engines_quantize_and_generate(weights, references, tmp_path):
    pytest.importorskip("torchao")
    pytest.importorskip("transformers")
    for name, fmt in (("torchao-int8", "int8"), ("torchao-int4", "int4")):
        assert engines.engine_weights(name) == fmt
        engine = engines.make_engine(name, 1, compile_backend="eager")  # dynamo, no codegen
        costs = engine.prepare(weights, tmp_path)
        assert costs["quantize_s"] > 0
        c_fc = engine.hf.transformer.h[0].mlp.c_fc.weight
        assert type(c_fc).__module__.startswith("torchao")  # quantized by torchao
        if fmt == "int4":
            assert c_fc.qdata.min() >= -8 and c_fc.qdata.max() <= 7  # int4 values
        tokens, stamps = engine.generate(PROMPTS[0], N)
        assert len(tokens) == len(stamps) == N
        if fmt == "int8":  # per-row int8 weights: this model's greedy tokens survive them
            assert tokens == references[0]


# ---- a peer that is not installed ----------------------------------------------------------

def test_a_missing_peer_package_is_a_not_installed_row_naming_its_extra(monkeypatch, tmp_path):
    missing = {"llama.cpp-q4_0": ["llama_cpp"], "torchao-int8": ["torchao"]}
    monkeypatch.setattr(peer_bench, "missing_packages", lambda name: missing[name])
    rows = {e: EngineRow(e, 1, True, weights=engines.engine_weights(e)) for e in missing}
    ready = peer_bench.start_workers(list(rows), tmp_path / "weights.pt", tmp_path, 1,
                                     peer_bench.PeerSettings(), rows, lambda msg: None)
    assert ready == {}
    table = format_case(CaseResult("tiny", 4, N, list(rows.values())))
    assert "not installed: llama_cpp missing (pip install 'smallmind-torch[llamacpp]')" in table
    assert "not installed: torchao missing (pip install 'smallmind-torch[torchao]')" in table
    assert engines.not_installed_reason("onnxruntime", ["onnx"]) == \
        "onnx missing (pip install 'smallmind-torch[peers]')"
