"""Byte-level BPE tokenizer with exactly `vocab_size` (default 512) tokens.

Built on Hugging Face `tokenizers`: the 256 byte symbols of GPT-2's byte-level alphabet,
one special token `<|endoftext|>`, and BPE merges up to `vocab_size` in all. Encoding then
decoding any UTF-8 text gives the text back unchanged (no prefix space, no normalizer, no
trimming, special tokens kept on decode).

`Tokenizer.default()` loads the tokenizer shipped in `smallmind_torch/data/tokenizer.json`,
trained once on the default corpus (`smallmind_torch.data.default_corpus`); rebuild it with
`python -m smallmind_torch.tokenizer`.
"""
from __future__ import annotations

import codecs
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 512
DEFAULT_PATH = Path(__file__).with_name("data") / "tokenizer.json"


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: printable unicode char -> the byte it stands for."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    """Byte-level BPE: `encode(str) -> list[int]`, `decode(list[int]) -> str`."""

    def __init__(self, hf_tokenizer: _HFTokenizer):
        self._tok = hf_tokenizer
        self._vocab = hf_tokenizer.get_vocab(with_added_tokens=True)
        specials = {t.content for t in hf_tokenizer.get_added_tokens_decoder().values()}
        self._id_bytes: list[bytes] = [b""] * len(self._vocab)
        bd = _byte_decoder()
        for piece, i in self._vocab.items():
            if i >= len(self._id_bytes):
                raise ValueError(f"tokenizer ids are not contiguous (id {i} >= {len(self._vocab)})")
            if piece in specials:
                self._id_bytes[i] = piece.encode("utf-8")
            else:
                try:
                    self._id_bytes[i] = bytes(bd[c] for c in piece)
                except KeyError as e:
                    raise ValueError(f"token {piece!r} is not in the byte-level alphabet") from e
        self.eot_id: int | None = self._vocab.get(EOT)

    # ---- core API -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        try:
            return self._tok.encode(text, add_special_tokens=False).ids
        except TypeError as exc:  # the Rust side rejects what UTF-8 cannot hold
            bad = next((c for c in text if 0xD800 <= ord(c) <= 0xDFFF), None)
            if bad is None:
                raise
            raise ValueError(f"text must be valid Unicode (UTF-8 encodable); it holds the lone "
                             f"surrogate {bad!r} at index {text.index(bad)}") from exc

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids` (a prefix of a longer sequence may end inside a UTF-8 char)."""
        table = self._id_bytes
        try:
            return b"".join(table[int(i)] for i in ids)
        except IndexError as e:
            raise ValueError(f"token id out of range [0, {self.vocab_size})") from e

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; invalid UTF-8 (only possible for arbitrary ids) becomes U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        return StreamDecoder(self)

    # ---- persistence ----------------------------------------------------------------
    def to_str(self) -> str:
        return self._tok.to_str(pretty=True)

    def save(self, path: "str | os.PathLike") -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_str() + "\n", encoding="utf-8")

    @classmethod
    def from_str(cls, json_str: str) -> "Tokenizer":
        return cls(_HFTokenizer.from_str(json_str))

    @classmethod
    def load(cls, path: "str | os.PathLike") -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer file at {path}")
        try:
            return cls.from_str(path.read_text(encoding="utf-8"))
        except Exception as e:  # tokenizers raises plain Exception on bad JSON
            raise ValueError(f"cannot read tokenizer {path}: {e}") from e

    @classmethod
    def default(cls) -> "Tokenizer":
        """The tokenizer shipped with the package (trained on the default corpus)."""
        return cls.load(DEFAULT_PATH)

    # ---- training -------------------------------------------------------------------
    @classmethod
    def train(cls, texts: "Iterable[str]", vocab_size: int = DEFAULT_VOCAB_SIZE,
              special_tokens: "tuple[str, ...]" = (EOT,)) -> "Tokenizer":
        """Train a byte-level BPE with exactly `vocab_size` tokens (bytes + specials + merges).

        If the texts are too short to find enough merges the vocabulary ends up smaller, and
        this raises: the models here need `vocab_size` to match the embedding table.
        """
        n_base = 256 + len(special_tokens)
        if vocab_size < n_base:
            raise ValueError(f"vocab_size must be >= {n_base} (256 bytes + special tokens)")
        tok = _HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=list(special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        if isinstance(texts, str):
            texts = [texts]
        tok.train_from_iterator(texts, trainer=trainer)
        out = cls(tok)
        if out.vocab_size != vocab_size:
            raise ValueError(
                f"training produced {out.vocab_size} tokens, not {vocab_size}: give it more text"
            )
        return out

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"


class StreamDecoder:
    """Turn token ids, fed one at a time, into text increments without splitting a character.

    Byte-level tokens can end in the middle of a multi-byte UTF-8 character; the incomplete
    bytes wait until the next token completes them (invalid sequences become U+FFFD).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._dec = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, ids: "int | Iterable[int]") -> str:
        if isinstance(ids, int):
            ids = [ids]
        return self._dec.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)


def _iter_default_texts() -> Iterator[str]:
    from .data import corpus_documents

    yield from corpus_documents()


def build_default(path: "str | os.PathLike" = DEFAULT_PATH) -> Tokenizer:
    """Retrain the shipped tokenizer on the default corpus and write it to `path`."""
    tok = Tokenizer.train(_iter_default_texts(), vocab_size=DEFAULT_VOCAB_SIZE)
    tok.save(path)
    return tok


if __name__ == "__main__":  # python -m smallmind_torch.tokenizer [path]
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_PATH
    t = build_default(target)
    info = json.loads(t.to_str())
    print(f"wrote {target}: {t.vocab_size} tokens, {len(info['model']['merges'])} merges")
