"""The Hugging Face transformers engines: `GPT2LMHeadModel.generate` plain ("hf") and with a
static cache under torch.compile ("hf-compiled"), on our weights (`GPT.to_hf`). The torchao
engines (torchao_engine.py) are the compiled one with quantized linear layers (`quantize`).
"""
from __future__ import annotations

import time
import warnings

from ..protocol.timing import device_sync
from .base import Engine, load_weights


class TimingStreamer:
    """A transformers streamer that stamps each new token (put() is called once with the prompt,
    then once per generated token)."""

    def __init__(self, device):
        self.device = device
        self.stamps = []

    def put(self, value):
        device_sync(self.device)
        self.stamps.append(time.perf_counter())

    def end(self):
        pass


class HFEngine(Engine):
    name = "hf"
    label = "HF generate"
    requires = ("transformers", "torch")

    def prepare(self, weights, workdir):
        self.use_threads()
        start = time.perf_counter()
        self.hf = load_weights(weights).to_hf().eval()
        self.hf.generation_config.eos_token_id = None  # exactly n tokens, like every engine
        costs = {"load_s": time.perf_counter() - start} | self.quantize(self.hf)
        if self.compiled:
            import torch

            # transformers' recipe (docs: static cache and torch.compile); the compile itself
            # happens in the first generate of each prompt shape
            self.hf.generation_config.cache_implementation = "static"
            self.hf.forward = torch.compile(self.hf.forward, backend=self.backend,
                                            mode="reduce-overhead" if self.backend == "inductor" else None,
                                            fullgraph=True)
        return costs

    def quantize(self, hf) -> dict:
        """Change the HF model's weights in place before any compile (the torchao engines);
        the one-time costs."""
        return {}

    def generate(self, prompt, n):
        import torch

        idx = torch.tensor([prompt], dtype=torch.long)
        streamer = TimingStreamer("cpu")  # stamps each token as generate streams it
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
