"""The engines run side by side on the same weights: one small adapter per engine and a
registry (the interface, the weights file and the timing of one generation are in base.py).

Each adapter runs in its own process (worker.py), so one engine's thread pools and libraries
never slow another's (`smallmind bench` runs its peers in its own process instead, to profile
their allocations); every import of an engine's package happens inside its adapter, so a
worker loads only what its engine needs (and torch, which the package imports).

    smallmind     our model in a preset (`smallmind` = the --phase preset, `smallmind:PRESET`;
                  `smallmind:max-int8` runs on int8 weights)
    onnxruntime   the decode step with past K/V exported from our model (onnx_export.py), CPU
                  execution provider, IO binding: outputs of one step bound as the next's inputs
    onnxruntime-int8  the same graph after ONNX Runtime's dynamic quantization (quantize_dynamic:
                  int8 weights per output channel, activations quantized on the fly)
    ctranslate2   CTranslate2's own converter from the Hugging Face model, greedy
    ctranslate2-int8  the same model loaded with compute_type="int8" (CTranslate2 quantizes the
                  weights on load and runs its int8 GEMMs)
    hf            transformers `GPT2LMHeadModel.generate` (hf_engines.py)
    hf-compiled   the same with a static cache and `torch.compile` (compiled on the first call
                  of each prompt shape: that call's extra time is the compile time)
    llama.cpp     llama.cpp (llama-cpp-python) on a GGUF file written from our weights
                  (llama_cpp_engine.py, gguf_export.py); llama.cpp-q8_0 and llama.cpp-q4_0
                  on the same file with its matrices in q8_0 / q4_0
    torchao-int8  hf-compiled after torchao's int8 weight-only `quantize_` (torchao_engine.py);
    torchao-int4  ... int4 weight-only, groups of 32

The peers beyond ONNX Runtime, CTranslate2 and HF come with their own extras (`Engine.extra`:
[llamacpp], [torchao]); an engine whose packages are missing is "not installed" with the
command that installs them (`not_installed_reason`).
"""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

from .base import Engine, load_weights
from .hf_engines import HFCompiledEngine, HFEngine
from .llama_cpp_engine import LlamaCppEngine, LlamaCppQ4Engine, LlamaCppQ8Engine
from .torchao_engine import TorchAOInt4Engine, TorchAOInt8Engine


class SmallmindEngine(Engine):
    name = "smallmind"
    requires = ("torch",)

    def __init__(self, threads: int, preset: str = "max"):
        super().__init__(threads)
        self.preset = preset
        self.name = f"smallmind:{preset}"
        self.label = f"smallmind {preset}"
        self.weights = preset_weights(preset)

    def prepare(self, weights, workdir):
        self.use_threads()
        start = time.perf_counter()
        self.model = load_weights(weights)
        self.model.set_phase(self.preset)          # "max": which candidate (C++ ops built here)
        self.label = f"smallmind {self.model.phase.description}"
        return {"load_s": time.perf_counter() - start}

    def generate(self, prompt, n):
        """Greedy, as a user calls it: `generate_chunks`, whose first chunk is the prompt's
        prefill and first token; with fused decode the decode steps come in one C++ call per
        fill of the KV cache, so the steps of one chunk share its time evenly (their mean, not
        each step's own)."""
        import torch

        idx = torch.tensor([prompt], dtype=torch.long)
        tokens, stamps = [], []
        last = time.perf_counter()
        with torch.no_grad():
            for chunk in self.model.generate_chunks(idx, n, temperature=0.0):
                now, k = time.perf_counter(), chunk.size(1)
                stamps += [last + (now - last) * (i + 1) / k for i in range(k)]
                tokens.append(chunk)
                last = now
        return torch.cat(tokens, dim=1)[0].tolist(), stamps


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    label = "ONNX Runtime"
    requires = ("onnxruntime", "onnx", "onnxscript", "torch")

    def model_path(self, weights, workdir, costs: dict) -> Path:
        """The exported decode step (exported once per weights: the other thread counts and
        the int8 engine reuse it); costs["export_s"] None when reused."""
        costs["export_s"] = None
        path = workdir / "onnxruntime" / "decode_step.onnx"
        if not path.exists():
            from .onnx_export import export_decode_step

            self.use_threads()
            start = time.perf_counter()
            export_decode_step(load_weights(weights), path)
            costs["export_s"] = time.perf_counter() - start
        return path

    def prepare(self, weights, workdir):
        import numpy as np
        import onnxruntime as ort

        costs = {}
        path = self.model_path(weights, workdir, costs)
        start = time.perf_counter()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        costs["session_s"] = time.perf_counter() - start
        inputs = self.session.get_inputs()
        self.past_names = [i.name for i in inputs[1:]]
        self.output_names = [o.name for o in self.session.get_outputs()]
        _, n_head, _, head_dim = inputs[1].shape  # (B, n_head, P, head_dim)
        self.empty = np.zeros((1, n_head, 0, head_dim), dtype=np.float32)
        self.np, self.OrtValue = np, ort.OrtValue
        return costs

    def generate(self, prompt, n):
        io = self.session.io_binding()
        ids = self.OrtValue.ortvalue_from_numpy(self.np.asarray([prompt], dtype=self.np.int64))
        past = [self.OrtValue.ortvalue_from_numpy(self.empty)] * len(self.past_names)
        tokens, stamps = [], []
        for _ in range(n):
            io.bind_ortvalue_input("input_ids", ids)
            for name, value in zip(self.past_names, past):
                io.bind_ortvalue_input(name, value)
            for name in self.output_names:
                io.bind_output(name, "cpu")
            self.session.run_with_iobinding(io)
            ids, *past = io.get_outputs()  # next step's inputs: no copy
            tokens.append(int(ids.numpy()[0, 0]))
            stamps.append(time.perf_counter())
        return tokens, stamps


class OnnxRuntimeInt8Engine(OnnxRuntimeEngine):
    name = "onnxruntime-int8"
    label = "ONNX Runtime, dynamic int8"
    weights = "int8"

    def model_path(self, weights, workdir, costs: dict) -> Path:
        """The exported step after quantize_dynamic (once per weights, reused like the export):
        int8 weights per output channel of every MatMul, activations quantized per call."""
        fp32 = super().model_path(weights, workdir, costs)
        costs["quantize_s"] = None
        path = workdir / "onnxruntime" / "decode_step.int8.onnx"
        if not path.exists():
            from onnxruntime.quantization import QuantType, quantize_dynamic

            start = time.perf_counter()
            tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.onnx")
            quantize_dynamic(fp32, tmp, weight_type=QuantType.QInt8, per_channel=True)
            os.replace(tmp, path)
            costs["quantize_s"] = time.perf_counter() - start
        return path


def _token(i: int) -> str:
    """The vocabulary entry of token id i in the converted model (our ids have no text)."""
    return f"<{i}>"


def save_hf_with_tokenizer(model, out_dir: Path) -> Path:
    """`model.to_hf()` saved with save_pretrained, plus a word-level tokenizer whose entry i is
    token id i (CTranslate2's converter reads the vocabulary from a tokenizer)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    model.to_hf().save_pretrained(out_dir)
    vocab = {_token(i): i for i in range(model.config.vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=_token(0)))
    special = _token(0)  # never stops a generation: every engine is asked for exactly n tokens
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=special, eos_token=special,
                            unk_token=special).save_pretrained(out_dir)
    return out_dir


class CTranslate2Engine(Engine):
    name = "ctranslate2"
    label = "CTranslate2"
    requires = ("ctranslate2", "transformers", "torch")
    compute_type = "float32"

    def prepare(self, weights, workdir):
        import ctranslate2

        costs = {"convert_s": None}  # None: converted by an earlier worker, reused
        out = workdir / "ctranslate2"
        if not (out / "model.bin").exists():  # converted once per weights
            from ctranslate2.converters import TransformersConverter

            start = time.perf_counter()
            hf_dir = save_hf_with_tokenizer(load_weights(weights), workdir / "ctranslate2-hf")
            tmp = workdir / f"ctranslate2.tmp{os.getpid()}"
            TransformersConverter(str(hf_dir)).convert(str(tmp), quantization="float32", force=True)
            os.replace(tmp, out)
            costs["convert_s"] = time.perf_counter() - start
        start = time.perf_counter()
        self.generator = ctranslate2.Generator(str(out), device="cpu", compute_type=self.compute_type,
                                               intra_threads=self.threads, inter_threads=1)
        costs["load_s"] = time.perf_counter() - start
        return costs

    def generate(self, prompt, n):
        stamps = []

        def stamp(step):  # called by CTranslate2 as each token is chosen
            stamps.append(time.perf_counter())
            return False  # go on

        result = self.generator.generate_batch(
            [[_token(i) for i in prompt]], max_length=n, sampling_topk=1, beam_size=1,
            end_token=[], include_prompt_in_result=False, callback=stamp)
        return result[0].sequences_ids[0], stamps


class CTranslate2Int8Engine(CTranslate2Engine):
    name = "ctranslate2-int8"
    label = "CTranslate2, int8"
    weights = "int8"
    compute_type = "int8"  # quantized from the float32 conversion as it loads


# ---- registry --------------------------------------------------------------------------------

ENGINES: dict = {cls.name: cls for cls in (SmallmindEngine, OnnxRuntimeEngine, OnnxRuntimeInt8Engine,
                                            CTranslate2Engine, CTranslate2Int8Engine, HFEngine,
                                            HFCompiledEngine, LlamaCppEngine, LlamaCppQ8Engine,
                                            LlamaCppQ4Engine, TorchAOInt8Engine, TorchAOInt4Engine)}
PEERS = tuple(name for name in ENGINES if name != "smallmind")   # the engines we measure against


def split_name(name: str) -> tuple:
    """("smallmind", preset) for "smallmind" (preset None: the --phase preset) or
    "smallmind:PRESET"; (name, None) for a peer. ValueError for an unknown name."""
    from ...config import presets

    base, _, preset = name.partition(":")
    if base not in ENGINES or (preset and base != "smallmind"):
        raise ValueError(f"unknown engine {name!r}; choose from: {', '.join(ENGINES)} "
                         "(or smallmind:PRESET)")
    if preset and preset not in presets():
        raise ValueError(f"unknown phase {preset!r} in engine {name!r}; choose from: "
                         f"{', '.join(presets())}")
    return base, preset or None


def make_engine(name: str, threads: int, default_preset: str = "max",
                compile_backend: str = "inductor") -> Engine:
    base, preset = split_name(name)
    if base == "smallmind":
        return SmallmindEngine(threads, preset or default_preset)
    if ENGINES[base].compiled:  # hf-compiled, the torchao engines
        return ENGINES[base](threads, compile_backend)
    return ENGINES[base](threads)


def missing_packages(name: str) -> list:
    """The modules an engine needs that are not installed (checked without importing them)."""
    base, _ = split_name(name)
    return [m for m in ENGINES[base].requires if importlib.util.find_spec(m) is None]


def not_installed_reason(name: str, missing: list) -> str:
    """Why an engine is "not installed": its missing modules and the extra that installs them."""
    extra = ENGINES[split_name(name)[0]].extra
    return f"{', '.join(missing)} missing (pip install 'smallmind-torch[{extra}]')"


def is_peer(name: str) -> bool:
    return split_name(name)[0] != "smallmind"


def preset_weights(preset: str) -> str:
    """The weight format a preset computes with ("max-int8": int8)."""
    from ...config import MAX_PRESETS, PHASES

    if preset in MAX_PRESETS:
        return next(iter(MAX_PRESETS[preset].values())).weights
    return PHASES[preset].weights


def engine_weights(name: str, default_preset: str = "max") -> str:
    """The weight format an engine computes with: "fp32", "int8" for the int8 engines (q8_0
    among them) and `smallmind:max-int8`, "int4" for the int4 ones (q4_0 among them); its
    greedy tokens are compared with fp32 reference's, and for a lossy format the agreement is
    measured, not required."""
    base, preset = split_name(name)
    if base == "smallmind":
        return preset_weights(preset or default_preset)
    return ENGINES[base].weights
