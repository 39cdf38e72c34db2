"""The llama.cpp engines, through llama-cpp-python's low-level API (its C functions one to one):
our weights written as a GGUF file for llama.cpp's gpt2 architecture (gguf_export.py), loaded
on the CPU, and greedy decoding as llama.cpp's own examples do it: `llama_decode` of the prompt
in one batch, then of each new token, the next token chosen by llama.cpp's greedy sampler (the
argmax of the last logits, in C).

    llama.cpp       every tensor float32
    llama.cpp-q8_0  the matrices in q8_0 (blocks of 32 int8 weights, a float16 scale each)
    llama.cpp-q4_0  the matrices in q4_0 (blocks of 32 4-bit weights, a float16 scale each)

The context holds the model's whole context in one batch; its keys and values are kept float32
(llama.cpp's default is float16; every other engine here keeps them float32) and flash
attention is off (llama.cpp's `auto` may turn it on: off computes the plain softmax(QK^T)V
graph, as the other engines do). Threads: n_threads (one token) and n_threads_batch (the
prompt) both the engine's thread count. llama.cpp's info lines (hundreds per load) are
dropped; its warnings and errors go to stderr (the worker's log), and the last error is in
the exception when a load fails.
"""
from __future__ import annotations

import sys
import time

from .base import Engine, load_weights

# ggml_log_level: 3 warn, 4 error (1 debug, 2 info and 5 "continue the line" are dropped)
LOG_WARN, LOG_ERROR = 3, 4


class LlamaCppEngine(Engine):
    name = "llama.cpp"
    label = "llama.cpp"
    requires = ("llama_cpp", "gguf", "torch")
    extra = "llamacpp"
    file_type = "f32"     # gguf_export.FILE_TYPES

    def prepare(self, weights, workdir):
        import llama_cpp as llama

        costs = {"convert_s": None}  # None: written by an earlier worker, reused
        path = workdir / "llama.cpp" / f"model.{self.file_type}.gguf"
        if not path.exists():  # once per weights and file type
            from .gguf_export import write_gguf

            start = time.perf_counter()
            write_gguf(load_weights(weights), path, self.file_type)
            costs["convert_s"] = time.perf_counter() - start
        start = time.perf_counter()
        self.llama = llama
        self._route_logs()
        llama.llama_backend_init()
        model_params = llama.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self.model = llama.llama_model_load_from_file(str(path).encode(), model_params)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path.name}: {self.last_error}")
        params = llama.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = llama.llama_model_n_ctx_train(self.model)
        params.n_seq_max = 1
        params.n_threads = params.n_threads_batch = self.threads
        params.type_k = params.type_v = llama.GGML_TYPE_F32
        params.flash_attn_type = llama.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        self.ctx = llama.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not make a context: {self.last_error}")
        self.sampler = llama.llama_sampler_init_greedy()
        costs["load_s"] = time.perf_counter() - start
        return costs

    def _route_logs(self) -> None:
        """Warnings and errors to stderr, the last error kept (the callback lives as long as
        the engine: llama.cpp keeps only its address)."""
        self.last_error = "see its log"

        def log(level, text, user_data):
            line = text.decode("utf-8", errors="replace")
            if level in (LOG_WARN, LOG_ERROR):
                sys.stderr.write(line)
            if level == LOG_ERROR and line.strip():
                self.last_error = line.strip()

        self.log_callback = self.llama.llama_log_callback(log)
        self.llama.llama_log_set(self.log_callback, None)

    def generate(self, prompt, n):
        llama = self.llama
        llama.llama_memory_clear(llama.llama_get_memory(self.ctx), True)  # a fresh sequence
        tokens, stamps = [], []
        batch = list(prompt)
        for _ in range(n):
            ids = (llama.llama_token * len(batch))(*batch)
            # positions follow the sequence's cache; only the batch's last logits are computed
            status = llama.llama_decode(self.ctx, llama.llama_batch_get_one(ids, len(batch)))
            if status != 0:
                raise RuntimeError(f"llama_decode returned {status}: {self.last_error}")
            token = llama.llama_sampler_sample(self.sampler, self.ctx, -1)
            stamps.append(time.perf_counter())
            tokens.append(token)
            batch = [token]
        return tokens, stamps

    def version(self) -> str:
        from importlib.metadata import version

        return f"llama-cpp-python {version('llama-cpp-python')}"


class LlamaCppQ8Engine(LlamaCppEngine):
    name = "llama.cpp-q8_0"
    label = "llama.cpp, q8_0"
    file_type = "q8_0"
    weights = "int8"


class LlamaCppQ4Engine(LlamaCppEngine):
    name = "llama.cpp-q4_0"
    label = "llama.cpp, q4_0"
    file_type = "q4_0"
    weights = "int4"
