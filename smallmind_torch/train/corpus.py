"""The default training corpus and nanoGPT-style batches.

The corpus is text every Python installation carries offline: `pydoc_data.topics.topics`,
the language reference pages that `help()` shows (about 0.45-0.7 MB of English and code,
depending on the Python version). Documents are taken in sorted-key order and joined with
the `<|endoftext|>` token, so the corpus is the same on every machine with the same Python.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache

import torch

from .tokenizer import DEFAULT_PATH, DEFAULT_VOCAB_SIZE, EOT, Tokenizer


def corpus_documents() -> list[str]:
    """The documents of the default corpus, in a fixed order."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def default_corpus() -> str:
    """The default corpus as one string, documents separated by `<|endoftext|>`."""
    return EOT.join(corpus_documents())


def encode_text(text: str, tokenizer: Tokenizer) -> torch.Tensor:
    """Token ids of `text` as a 1-D int64 tensor."""
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


@lru_cache(maxsize=4)
def _default_tokens(tokenizer_json: str) -> torch.Tensor:
    tok = Tokenizer.from_str(tokenizer_json)
    # the documents' separators are the special token
    return torch.tensor(tok.encode_batch([default_corpus()], allow_special=True)[0],
                        dtype=torch.long)


def default_tokens(tokenizer: Tokenizer) -> torch.Tensor:
    """The default corpus encoded with `tokenizer` (cached per tokenizer; do not modify)."""
    return _default_tokens(tokenizer.to_str())


def train_val_split(data: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """First (1 - val_fraction) of the tokens for training, the rest for validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = int(len(data) * (1.0 - val_fraction))
    return data[:n], data[n:]


def get_batch(data: torch.Tensor, batch_size: int, block_size: int,
              generator: "torch.Generator | None" = None,
              device: "torch.device | str" = "cpu",
              rows: "slice | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows of `block_size` tokens: inputs x and next-token targets y.

    `rows` keeps only those windows of the batch (a data-parallel rank's shard); the whole
    batch is drawn all the same, so the generator advances as in one process and every rank,
    whatever their number, cuts its shard from the same global batch."""
    if len(data) < block_size + 1:
        raise ValueError(f"need at least block_size + 1 = {block_size + 1} tokens, have {len(data)}")
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    if rows is not None:
        ix = ix[rows]
    offsets = torch.arange(block_size + 1)
    windows = data[ix[:, None] + offsets]          # (B, T + 1)
    x = windows[:, :-1].contiguous()
    y = windows[:, 1:].contiguous()
    if torch.device(device).type != "cpu":
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    return x, y


def build_default_tokenizer(path: "str | os.PathLike" = DEFAULT_PATH) -> Tokenizer:
    """Retrain the shipped tokenizer on the default corpus and write it to `path`."""
    tok = Tokenizer.train(corpus_documents(), vocab_size=DEFAULT_VOCAB_SIZE)
    tok.save(path)
    return tok


def main(argv=None) -> int:
    """python -m smallmind_torch.train.corpus [PATH]: rebuild the shipped tokenizer."""
    import sys

    argv = sys.argv[1:] if argv is None else argv
    target = argv[0] if argv else DEFAULT_PATH
    tok = build_default_tokenizer(target)
    print(f"wrote {target}: {tok.vocab_size} tokens, "
          f"{len(json.loads(tok.to_str())['model']['merges'])} merges")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
