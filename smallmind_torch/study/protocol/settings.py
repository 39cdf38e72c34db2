"""Every knob of the protocol (BenchSettings) and its fixed inputs: the prompt of the timed
generation and the input of the logits check, the same for every preset; progress bars."""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class BenchSettings:
    """Every knob of the protocol; the defaults are the study's (docs/study.md)."""

    new_tokens: int = 50
    runs: int = 3                 # timed generation runs (after one warm-up run)
    prompt_len: int = 16          # length of the fixed prompt
    prefill_repeat: int = 3       # timed full forwards at T = block_size (after one warm-up)
    gemm_sizes: tuple = (128, 256, 512)
    gemm_repeat: int = 5
    peak_mm_sizes: tuple = (128, 256, 512, 1024)  # torch.mm peak = the best of these
    bandwidth_large_bytes: "int | None" = None    # default: 4 x last-level cache, >= 64 MiB
    seed: int = 1234              # fixed prompt and check input
    tolerance: float = 1e-4       # max |logit difference| against reference
    profile: bool = True          # memory and time split (one profiled generation)
    machine_samples: int = 5      # interleaved samples of each machine limit; the best is kept
    smoke: bool = False           # BenchSettings.tiny(): no figure or ratio of it means much

    def __post_init__(self):
        for name in ("new_tokens", "runs", "prompt_len", "prefill_repeat", "gemm_repeat",
                     "machine_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"BenchSettings.{name} must be >= 1")
        object.__setattr__(self, "gemm_sizes", tuple(int(n) for n in self.gemm_sizes))
        object.__setattr__(self, "peak_mm_sizes", tuple(int(n) for n in self.peak_mm_sizes))

    @classmethod
    def tiny(cls, **overrides) -> "BenchSettings":
        """A few tokens, small GEMMs and buffers: seconds, for tests and smoke runs."""
        base = dict(new_tokens=6, runs=2, prompt_len=4, prefill_repeat=1, gemm_sizes=(32, 64),
                    gemm_repeat=1, peak_mm_sizes=(32, 64), bandwidth_large_bytes=8 * 2**20,
                    machine_samples=2, smoke=True)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def fixed_prompt(config, length: int = 16, seed: int = 1234, device="cpu") -> torch.Tensor:
    """(1, length) token ids, the same for every preset (random ids from a fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    length = max(1, min(length, config.block_size))
    return torch.randint(0, config.vocab_size, (1, length), generator=g).to(device)


def describe_prompt(prompt, settings: BenchSettings, text: "str | None" = None) -> str:
    """What the study's prompt is, for the report: `prompt` None means fixed_prompt's random ids;
    `text` is the text a given prompt was encoded from."""
    if prompt is None:
        return f"{settings.prompt_len} random token ids (seed {settings.seed})"
    n = prompt.size(1)
    return f"{n} tokens of the text {text!r}" if text else f"a given prompt of {n} tokens"


def check_input(config, seed: int = 1234, device="cpu") -> torch.Tensor:
    """(1, block_size) token ids: the fixed input of the logits check and of the prefill timing."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, config.vocab_size, (1, config.block_size), generator=g).to(device)


def progress_bar(total, desc, enabled):
    """A progress bar (tqdm; a widget in Jupyter) when `enabled`; else nothing, not even a
    disabled bar (tqdm's notebook bar warns without ipywidgets even when disabled)."""
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, unit="run")


def progress_over(items, desc: str, enabled: bool):
    """`items` under a progress bar (tqdm) when `enabled`."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, leave=False, unit="preset")
