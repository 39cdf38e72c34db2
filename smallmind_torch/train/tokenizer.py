"""Byte-level BPE tokenizer with exactly `vocab_size` (default 512) tokens.

Built on Hugging Face `tokenizers`: the 256 byte symbols of GPT-2's byte-level alphabet,
one special token `<|endoftext|>`, and BPE merges up to `vocab_size` in all. Encoding then
decoding any UTF-8 text gives the text back unchanged (no prefix space, no normalizer, no
trimming, special tokens kept on decode). Text never gives a special token's id unless the
caller allows it (`encode(text, allow_special=True)`, as the corpus does between documents).

`Tokenizer.default()` loads the tokenizer shipped in `smallmind_torch/assets/tokenizer.json`,
trained once on the default corpus; rebuild it with `python -m smallmind_torch.train.corpus`.
"""
from __future__ import annotations

import codecs
import json
import operator
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 512
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "assets" / "tokenizer.json"


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
        # The same BPE without its added tokens: plain text encodes through it, so that text
        # which happens to spell "<|endoftext|>" gives the ids of those characters
        plain = json.loads(hf_tokenizer.to_str())
        plain["added_tokens"] = []
        self._plain = _HFTokenizer.from_str(json.dumps(plain))

    # ---- core API -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. A special token's text ("<|endoftext|>") gives its special id
        only with allow_special=True; else it is plain text, encoded like any other."""
        return self.encode_batch([text], allow_special)[0]

    def encode_batch(self, texts: "list[str]", allow_special: bool = False) -> "list[list[int]]":
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError("encode takes a str (encode_batch a list of str), got "
                            f"{type(texts).__name__ if isinstance(texts, str) else [type(t).__name__ for t in texts]}")
        try:
            tok = self._tok if allow_special else self._plain
            return [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]
        except TypeError as exc:  # the Rust side rejects what UTF-8 cannot hold
            for n, text in enumerate(texts):
                bad = next((c for c in text if 0xD800 <= ord(c) <= 0xDFFF), None)
                if bad is not None:
                    raise ValueError(f"text must be valid Unicode (UTF-8 encodable); text {n} holds "
                                     f"the lone surrogate {bad!r} at index {text.index(bad)}") from exc
            raise

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids` (a prefix of a longer sequence may end inside a UTF-8 char)."""
        table, n = self._id_bytes, len(self._id_bytes)
        out = []
        for i in ids:
            try:
                k = operator.index(i)
            except TypeError:
                raise ValueError(f"token ids must be ints, got {i!r}") from None
            if isinstance(i, bool) or not 0 <= k < n:
                raise ValueError(f"token id {i!r} is out of range [0, {n})")
            out.append(table[k])
        return b"".join(out)

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
        """Text completed by one id (an int, numpy integer, 0-d tensor) or several."""
        try:
            ids = [operator.index(ids)]
        except TypeError:
            pass  # an iterable of ids
        return self._dec.decode(self.tokenizer.decode_bytes(ids))

    def flush(self) -> str:
        return self._dec.decode(b"", final=True)
