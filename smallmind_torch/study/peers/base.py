"""What every engine shares: the weights file they all load, the timing of one generation, and
the adapter interface (engines.py has the adapters and the registry).

An adapter is made for a thread count, prepared once from the shared weights file (export,
conversion, compilation: `prepare` returns what that one-time work cost, in seconds) and then
asked for greedy generations: `generate(prompt_ids, n) -> (tokens, stamps)`, the n new token
ids and the `time.perf_counter()` at which each one was known. `timed_run` turns one call into
a `RunTiming` (tokens/s with prefill included, first-token time, the intervals between
consecutive tokens), the protocol of docs/study.md.
"""
from __future__ import annotations

import importlib
import statistics
import time
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

    from ...config import ModelConfig
    from ...model import GPT

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
    extra = "peers"         # the package extra that installs them
    weights = "fp32"        # the weight format it computes with: "fp32", "int8" or "int4"
    compiled = False        # torch.compile'd: made with the compile backend

    def __init__(self, threads: int):
        self.threads = threads

    def use_threads(self) -> None:
        """torch's intra-op threads for this engine's process (an engine imports torch lazily)."""
        import torch

        torch.set_num_threads(self.threads)

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

