"""Speculative decoding (beyond the seed): the target's own tokens, several per target call.

A cheap *draft* proposes k tokens; the target (fp32, its own phase, e.g. "max") scores all of
them in ONE call through its KV cache (`GPT.verify`: the k + 1 positions after what the cache
holds), keeps the longest prefix it agrees with plus one token of its own (the correction at
the first disagreement, or a bonus token after k agreements), and rolls the caches back
(`GPT.rewind`) past the rejected ones. A decode step at batch 1 reads every weight to do a
matrix-vector product per layer; scoring k + 1 tokens reads them once for k + 1 rows, so it
costs little more than one step where reading the weights dominates (docs/study.md).

Drafts (`make_draft`):
- "ngram": prompt lookup, no model (Hugging Face's prompt_lookup, llama.cpp's lookup): the last
  n tokens (n = 3, 2, 1) found earlier in the context propose the k tokens that followed them;
- a preset name ("max-int8", any phase with a KV cache or without): self-speculative, the same
  weights in another phase, a second GPT with its own KV cache (its weights are a copy made when
  the draft is made: if the target's change, the output stays the target's, only acceptance
  drops).

Greedy: a drafted token is kept when it is the target's argmax, so the output is the target's
own greedy generation (up to near-ties within float rounding: the target scores a position in a
k + 1-row call instead of a one-row step). Sampling: the rule of Leviathan et al. / Chen et al.
(2023): a drafted x is kept with probability min(1, p(x) / q(x)), else the token is drawn from
norm(max(0, p - q)); the bonus token from p; p and q are generation.probabilities of the
target's and the draft's logits at the same temperature and top_k, so the output is distributed
as the target's own sampling.

Context limit: speculation runs while the sequence fits the KV cache (k shrinks to the room
left); past block_size every token re-prefills the cropped window, exactly as generate does
(the rest is generate's own loop).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from . import generation
from .config import presets

NGRAM = "ngram"


@dataclass(frozen=True)
class SpeculativeConfig:
    """draft: "ngram" or a preset name (config.presets()); k: tokens drafted per target call;
    ngram_sizes: the suffix lengths prompt lookup tries, longest first."""

    draft: str = NGRAM
    k: int = 4
    ngram_sizes: tuple = (3, 2, 1)

    def __post_init__(self):
        if not isinstance(self.draft, str) or self.draft not in (NGRAM, *presets()):
            raise ValueError(f"draft must be {NGRAM!r} or a preset name {list(presets())}, "
                             f"got {self.draft!r}")
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"k (tokens drafted per step) must be an int >= 1, got {self.k!r}")
        sizes = self.ngram_sizes
        if (not isinstance(sizes, tuple) or not sizes
                or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in sizes)):
            raise ValueError(f"ngram_sizes must be a non-empty tuple of ints >= 1, got {sizes!r}")


@dataclass
class SpeculativeStats:
    """What one speculative generation did: target calls (`steps`), tokens drafted and kept,
    how many were kept per step (histogram[j]: steps that kept j, 0..k), seconds spent drafting
    and verifying (perf_counter), and the tokens made past block_size by generate's loop."""

    k: int
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    histogram: list = field(default_factory=list)
    draft_s: float = 0.0
    verify_s: float = 0.0
    rejections: int = 0        # steps that rejected a drafted token
    draft_calls: int = 0       # the draft model's forward calls (0 for ngram)
    tokens: int = 0            # tokens generated, by speculation and after it
    unspeculated: int = 0      # ... of which past block_size (generate's loop)

    def __post_init__(self):
        self.histogram = self.histogram or [0] * (self.k + 1)

    @property
    def acceptance_rate(self) -> float:
        """accepted / drafted (0 when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def per_token_acceptance(self) -> float:
        """a, the chance that a drafted token is kept given that the ones before it were: kept
        tokens over kept + rejected ones (a step stops at its first rejection, so accepted /
        drafted, which counts the never-checked tokens after it, underestimates a)."""
        checked = self.accepted + self.rejections
        return self.accepted / checked if checked else 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens per target call: the kept drafted ones plus the target's own."""
        return (self.tokens - self.unspeculated) / self.steps if self.steps else 0.0

    def describe(self) -> str:
        return (f"{self.steps} target calls for {self.tokens} tokens "
                f"({self.tokens_per_step:.2f} per call); drafted {self.drafted}, accepted "
                f"{self.accepted} ({100 * self.acceptance_rate:.0f} %); kept per call "
                f"0..{self.k}: {self.histogram}; draft {1e3 * self.draft_s:.1f} ms, verify "
                f"{1e3 * self.verify_s:.1f} ms")


# ---- drafts: each writes its proposal into the token buffer after the committed tokens -------

class NgramDraft:
    """Prompt lookup: an earlier occurrence of the context's last n tokens (n from the longest
    of `sizes`; the latest followed by k tokens) proposes the tokens that followed it; nothing
    if none is found.
    Deterministic: its q is all on the token it proposes (q = None below)."""

    def __init__(self, sizes=(3, 2, 1)):
        self.sizes, self.calls = sizes, 0

    def start(self) -> None:
        pass

    def propose(self, tokens, n: int, k: int, temperature: float, top_k, generator) -> tuple:
        """Write up to k tokens at tokens[0, n:]; (how many, None)."""
        context = tokens[0, :n]
        for size in self.sizes:
            if size >= n:
                continue
            windows = context.unfold(0, size, 1)[:-1]  # every earlier window of `size` tokens
            found = (windows == context[n - size:]).all(dim=1).nonzero()
            if len(found):
                # the latest match followed by k tokens, else the earliest (the longest
                # continuation): in a loop the latest match ends next to the suffix itself
                follows = found.view(-1) + size
                full = follows[follows + k <= n]
                follow = int(full[-1] if len(full) else follows[0])
                m = min(k, n - follow)
                tokens[0, n:n + m] = context[follow:follow + m]
                return m, None
        return 0, None

    def kept(self, n: int) -> None:
        pass


class ModelDraft:
    """Self-speculative: the target's weights in another phase, a GPT of its own with its own KV
    cache, drafting token by token; its cache is rewound to the tokens the target kept."""

    def __init__(self, model, phase):
        from .model import GPT  # model.py imports generation, which this module imports

        self.model = GPT(model.config).eval()
        self.model.load_state_dict(model.state_dict())
        self.model.to(model.transformer.wte.weight.device)
        self.model.set_phase(phase)
        self.uses_cache = self.model.phase.opt.kv_cache
        self.calls = 0

    def start(self) -> None:
        if self.uses_cache:
            self.model.rewind(0)

    def _logits(self, tokens, at: int):
        """The draft's logits (1, V) of the token at position `at`, from the tokens before it."""
        draft = self.model
        self.calls += 1
        if not self.uses_cache:
            return draft.forward_last(tokens[:, max(0, at - draft.config.block_size):at])
        held = draft.phase.cache_length
        if held == at - 1 and draft.phase.kv_caches is not None:
            return draft.decode_step(tokens[:, at - 1:at])
        # what the cache lacks of the context (the tokens kept since), in one call
        return draft.verify(tokens[:, held:at])[:, -1, :]

    def propose(self, tokens, n: int, k: int, temperature: float, top_k, generator) -> tuple:
        """Write k tokens at tokens[0, n:]; (k, their q (k, V), or None when greedy)."""
        greedy, qs = temperature < generation.MIN_TEMPERATURE, []
        for i in range(k):
            logits = self._logits(tokens, n + i)
            if greedy:
                tokens[0, n + i] = logits[0].argmax()
            else:
                q = generation.probabilities(logits, temperature, top_k)
                qs.append(q[0])
                tokens[0, n + i] = torch.multinomial(q[0], 1, generator=generator)[0]
        return k, torch.stack(qs) if qs else None

    def kept(self, n: int) -> None:
        """The sequence holds n tokens now: the cache keeps at most the first n - 1 (the last
        is fed with the next proposal)."""
        if self.uses_cache:
            self.model.rewind(min(self.model.phase.cache_length, n - 1))


def make_draft(model, config: SpeculativeConfig):
    """The draft `config` names for `model`: an NgramDraft, or a ModelDraft (a copy of the
    model's weights in the preset's phase). Pass it to speculative_generate (`draft=`) to reuse
    it across calls."""
    if not isinstance(config, SpeculativeConfig):
        raise ValueError(f"config must be a SpeculativeConfig, got {type(config).__name__}")
    if config.draft == NGRAM:
        return NgramDraft(config.ngram_sizes)
    return ModelDraft(model, config.draft)


# ---- verification ----------------------------------------------------------------------------

def accept(logits, drafted, q, temperature: float, top_k, generator) -> tuple:
    """(j, token): how many of the m `drafted` tokens (m,) the target keeps, and its own token
    after them. logits (m + 1, V): the target's at the positions of the last kept token and
    of each drafted one; q (m, V): the draft's distributions (None: a deterministic draft)."""
    m = drafted.numel()
    if temperature < generation.MIN_TEMPERATURE:  # the target's argmax, as its greedy decoding
        best = logits.argmax(dim=-1)
        differ = (best[:m] != drafted).nonzero()
        j = int(differ[0]) if len(differ) else m
        return j, best[j]
    p = generation.probabilities(logits, temperature, top_k)
    for i in range(m):
        x = drafted[i]
        q_x = 1.0 if q is None else q[i, x]
        if torch.rand((), generator=generator) * q_x < p[i, x]:  # with probability min(1, p/q)
            continue
        if q is None:
            residual = p[i].clone()
            residual[x] = 0.0
        else:
            residual = (p[i] - q[i]).clamp_min(0.0)
        if not residual.sum() > 0:  # only by rounding (p = q would have kept x)
            residual = p[i]
        return i, torch.multinomial(residual, 1, generator=generator)[0]
    return m, torch.multinomial(p[m], 1, generator=generator)[0]


@torch.no_grad()
def speculative_generate(model, idx, max_new_tokens, config: SpeculativeConfig,
                         temperature=0.0, top_k=None, generator=None, *, draft=None) -> tuple:
    """(tokens (1, T + max_new_tokens), SpeculativeStats): idx (1, T) followed by what the
    target `model` generates (its phase must have a KV cache), drafted by `config.draft` k
    tokens at a time (`draft`: one made by make_draft, reused; default: made for this call)."""
    max_new_tokens, temperature, top_k = generation.check_args(model, idx, max_new_tokens,
                                                               temperature, top_k, generator)
    if not isinstance(config, SpeculativeConfig):
        raise ValueError(f"config must be a SpeculativeConfig, got {type(config).__name__}")
    if idx.size(0) != 1:
        raise ValueError(f"speculative decoding runs one sequence (batch 1), got batch "
                         f"{idx.size(0)}")
    if not model.phase.opt.kv_cache:
        raise ValueError(f"speculative decoding verifies through the target's KV cache; phase "
                         f"{model.phase.name!r} has none (use e.g. 'max', 'phase2' or 'phase3')")
    draft = make_draft(model, config) if draft is None else draft
    stats, block_size = SpeculativeStats(config.k), model.config.block_size
    T0 = idx.size(1)
    n, end = T0, T0 + max_new_tokens
    with model.lock:
        tokens = generation.token_buffer(1, end + config.k, idx.device)  # room for a draft
        tokens[:, :T0] = idx
        model.rewind(0)
        draft.start()
        calls = draft.calls
        while n < end and n <= block_size:  # the verified positions stay in the cache
            k = min(config.k, block_size - n, end - n - 1)
            begin = time.perf_counter()
            m, q = draft.propose(tokens, n, k, temperature, top_k, generator) if k else (0, None)
            drafted = time.perf_counter()
            held = model.phase.cache_length
            if m == 0 and held == n - 1 and held > 0:  # nothing drafted: the plain decode step
                logits = model.decode_step(tokens[:, n - 1:n])
            else:
                logits = model.verify(tokens[:, held:n + m])[0, n - 1 - held:]
            j, token = accept(logits, tokens[0, n:n + m], q, temperature, top_k, generator)
            tokens[0, n + j] = token
            model.rewind(n + j)  # the last kept token is fed with the next call
            n += j + 1
            draft.kept(n)
            stats.verify_s += time.perf_counter() - drafted
            stats.draft_s += drafted - begin
            stats.steps, stats.drafted, stats.accepted = stats.steps + 1, stats.drafted + m, stats.accepted + j
            stats.histogram[j] += 1
            stats.rejections += j < m
        stats.draft_calls = draft.calls - calls
        if n < end:  # past block_size: each token re-prefills the cropped window, as generate does
            tokens[:, n:end] = generation.generate(model, tokens[:, :n], end - n, temperature,
                                                   top_k, generator)[:, n:]
            stats.unspeculated = end - n
    stats.tokens = max_new_tokens
    return tokens[:, :end], stats


# ---- what to expect (Leviathan et al., 2023) -------------------------------------------------

def expected_tokens_per_step(a: float, k: int) -> float:
    """E = (1 - a^(k+1)) / (1 - a): tokens per target call when each of k drafted tokens is kept
    with probability a given the ones before it (k + 1 at a = 1)."""
    return float(k + 1) if a >= 1.0 else (1.0 - a ** (k + 1)) / (1.0 - a)


def predicted_speedup(a: float, k: int, c: float, v: float) -> float:
    """E / (k c + v): the speed-up over plain decoding, where c is a drafted token's cost and v a
    verify call's, both in target decode steps. Break-even where it is 1."""
    return expected_tokens_per_step(a, k) / (k * c + v)
