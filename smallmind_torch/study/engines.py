"""The engines that `smallmind peers` runs side by side on the same weights: one small adapter
per engine, a registry, and the timing of one generation.

An adapter is made for a thread count, prepared once from the shared weights file (export,
conversion, compilation: `prepare` returns what that one-time work cost, in seconds) and then
asked for greedy generations: `generate(prompt_ids, n) -> (tokens, stamps)`, the n new token
ids and the `time.perf_counter()` at which each one was known. `timed_run` turns one call into
a `RunTiming` (tokens/s with prefill included, first-token time, the intervals between
consecutive tokens), the protocol of docs/study.md.

Each adapter runs in its own process (engine_worker.py), so one engine's thread pools and
libraries never slow another's; every import of an engine's package happens inside its
adapter, so a worker loads only what its engine needs (and torch, which the package imports).

    smallmind     our model in a preset (`smallmind` = the --phase preset, `smallmind:PRESET`)
    onnxruntime   the decode step with past K/V exported from our model (onnx_export.py), CPU
                  execution provider, IO binding: outputs of one step bound as the next's inputs
    ctranslate2   CTranslate2's own converter from the Hugging Face model, greedy
    hf            transformers `GPT2LMHeadModel.generate`
    hf-compiled   the same with a static cache and `torch.compile` (compiled on the first call
                  of each prompt shape: that call's extra time is the compile time)
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

# ---- the shared weights ----------------------------------------------------------------------


def save_weights(model, path: "str | Path") -> Path:
    """The model's config and state_dict in one file, read back by `load_weights`."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, path)
    return path


def load_weights(path: "str | Path"):
    """A GPT (reference preset, eval mode) with the weights saved by `save_weights`."""
    import torch

    from ..config import ModelConfig
    from ..model import GPT

    data = torch.load(path, map_location="cpu", weights_only=True)
    model = GPT(ModelConfig(**data["config"]), phase="reference")
    model.load_state_dict(data["state_dict"])
    return model.eval()


# ---- one timed generation --------------------------------------------------------------------

@dataclass
class RunTiming:
    tokens: list            # the generated token ids
    total_s: float          # call to return: prefill + every token
    first_token_s: float    # call to the first token: prefill + first token
    steps_s: list           # intervals between consecutive tokens (decode steps)

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.total_s

    @property
    def decode_s(self) -> "float | None":
        return statistics.median(self.steps_s) if self.steps_s else None

    def to_dict(self) -> dict:
        return asdict(self)


def timed_run(engine, prompt: list, new_tokens: int) -> RunTiming:
    start = time.perf_counter()
    tokens, stamps = engine.generate(prompt, new_tokens)
    total = time.perf_counter() - start
    tokens = [int(t) for t in tokens]
    if len(tokens) != new_tokens or len(stamps) != new_tokens:
        raise RuntimeError(f"{engine.name} returned {len(tokens)} tokens and {len(stamps)} time "
                           f"stamps for {new_tokens} new tokens")
    return RunTiming(tokens, total, stamps[0] - start, [b - a for a, b in zip(stamps, stamps[1:])])


# ---- adapters --------------------------------------------------------------------------------

class Engine:
    name = ""
    label = ""
    requires: tuple = ()    # modules the engine imports (missing: "not installed")

    def __init__(self, threads: int):
        self.threads = threads

    def prepare(self, weights: Path, workdir: Path) -> dict:
        """Load / export / convert from the weights file once; the one-time costs (seconds)."""
        raise NotImplementedError

    def generate(self, prompt: list, n: int) -> tuple:
        raise NotImplementedError

    def version(self) -> str:
        """The version of the engine's own package (its first requirement)."""
        try:
            module = importlib.import_module(self.requires[0])
        except Exception:  # pragma: no cover - reporting only
            return "?"
        return f"{self.requires[0]} {getattr(module, '__version__', '?')}"


def _torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


class SmallmindEngine(Engine):
    name = "smallmind"
    requires = ("torch",)

    def __init__(self, threads: int, preset: str = "max"):
        super().__init__(threads)
        self.preset = preset
        self.name = f"smallmind:{preset}"
        self.label = f"smallmind {preset}"

    def prepare(self, weights, workdir):
        _torch_threads(self.threads)
        start = time.perf_counter()
        self.model = load_weights(weights)
        self.model.set_phase(self.preset)          # "max": which candidate (C++ ops built here)
        self.label = f"smallmind {self.model.phase.description}"
        return {"load_s": time.perf_counter() - start}

    def generate(self, prompt, n):
        import torch

        idx = torch.tensor([prompt], dtype=torch.long)
        tokens, stamps = [], []
        with torch.no_grad():
            for tok in self.model.generate_stream(idx, n, temperature=0.0):
                stamps.append(time.perf_counter())
                tokens.append(tok)
        return torch.cat(tokens, dim=1)[0].tolist(), stamps


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    label = "ONNX Runtime"
    requires = ("onnxruntime", "onnx", "onnxscript", "torch")

    def prepare(self, weights, workdir):
        import numpy as np
        import onnxruntime as ort

        costs = {"export_s": None}  # None: exported by an earlier worker, reused
        path = workdir / "onnxruntime" / "decode_step.onnx"
        if not path.exists():  # exported once per weights; the other thread counts reuse it
            from .onnx_export import export_decode_step

            _torch_threads(self.threads)
            start = time.perf_counter()
            export_decode_step(load_weights(weights), path)
            costs["export_s"] = time.perf_counter() - start
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
        self.generator = ctranslate2.Generator(str(out), device="cpu", compute_type="float32",
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


class HFEngine(Engine):
    name = "hf"
    label = "HF generate"
    requires = ("transformers", "torch")
    compiled = False

    def prepare(self, weights, workdir):
        from .peers import _TimingStreamer  # stamps each token as generate streams it

        self.streamer = _TimingStreamer
        _torch_threads(self.threads)
        start = time.perf_counter()
        self.hf = load_weights(weights).to_hf().eval()
        self.hf.generation_config.eos_token_id = None  # exactly n tokens, like every engine
        if self.compiled:
            import torch

            # transformers' recipe (docs: static cache and torch.compile); the compile itself
            # happens in the first generate of each prompt shape
            self.hf.generation_config.cache_implementation = "static"
            self.hf.forward = torch.compile(self.hf.forward, backend=self.backend,
                                            mode="reduce-overhead" if self.backend == "inductor" else None,
                                            fullgraph=True)
        return {"load_s": time.perf_counter() - start}

    def generate(self, prompt, n):
        import torch

        idx = torch.tensor([prompt], dtype=torch.long)
        streamer = self.streamer("cpu")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = self.hf.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=n,
                                   min_new_tokens=n, do_sample=False, pad_token_id=0,
                                   streamer=streamer)
        return out[0, len(prompt):].tolist(), streamer.stamps[1:]  # stamps[0]: the prompt

    def compile_counters(self) -> dict:
        """Inductor's FX graph cache hits and misses so far (was the compile cold?)."""
        if not self.compiled:
            return {}
        try:
            from torch._dynamo.utils import counters
        except Exception:  # pragma: no cover
            return {}
        return {k: int(v) for k, v in counters["inductor"].items() if k.startswith("fxgraph_cache")}


class HFCompiledEngine(HFEngine):
    name = "hf-compiled"
    label = "HF generate, static cache + torch.compile"
    compiled = True

    def __init__(self, threads: int, backend: str = "inductor"):
        super().__init__(threads)
        self.backend = backend  # e.g. "aot_eager": the plumbing without inductor's compile
        if backend != "inductor":
            self.label = f"{self.label}[{backend}]"


# ---- registry --------------------------------------------------------------------------------

ENGINES: dict = {cls.name: cls for cls in (SmallmindEngine, OnnxRuntimeEngine, CTranslate2Engine,
                                            HFEngine, HFCompiledEngine)}
PEERS = tuple(name for name in ENGINES if name != "smallmind")   # the engines we measure against


def split_name(name: str) -> tuple:
    """("smallmind", preset) for "smallmind" (preset None: the --phase preset) or
    "smallmind:PRESET"; (name, None) for a peer. ValueError for an unknown name."""
    from ..config import presets

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
    if base == "hf-compiled":
        return HFCompiledEngine(threads, compile_backend)
    return ENGINES[base](threads)


def missing_packages(name: str) -> list:
    """The modules an engine needs that are not installed (checked without importing them)."""
    base, _ = split_name(name)
    return [m for m in ENGINES[base].requires if importlib.util.find_spec(m) is None]


def is_peer(name: str) -> bool:
    return split_name(name)[0] != "smallmind"
