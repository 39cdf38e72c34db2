"""Byte-level BPE tokenizer: exact size, lossless round trip, shipped default, streaming."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smallmind_torch.train.corpus import corpus_documents, default_corpus, get_batch, train_val_split
from smallmind_torch.train.tokenizer import DEFAULT_PATH, EOT, Tokenizer


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.default()


def test_default_tokenizer_is_shipped_and_has_512_tokens(tok):
    assert DEFAULT_PATH.is_file()
    assert tok.vocab_size == 512 == len(tok)
    info = json.loads(DEFAULT_PATH.read_text(encoding="utf-8"))
    assert len(info["model"]["vocab"]) + len(info["added_tokens"]) - 1 == 512  # EOT is in both
    assert tok.eot_id is not None and tok.decode([tok.eot_id]) == EOT
    assert all(tok.decode_bytes([i]) for i in range(512))  # every id is a real token


@pytest.mark.parametrize("text", [
    "", " ", "  leading and trailing  ", "\n\n\tindented\n", "héllo wörld, ça va?",
    "日本語のテキスト 中文", "emoji 🎉👍🏽👨‍👩‍👧", "\x00\x01\x7f\r\n", "a" * 5000,
    f"before{EOT}after", "def f(x):\n    return x ** 2\n",
])
def test_round_trip_examples(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < 512 for i in ids)
    assert tok.decode(ids) == text


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x80, exclude_categories=("Cs",)), min_size=1))
def test_stream_decoder_never_splits_a_character(tok, text):
    dec = tok.stream_decoder()
    pieces = [dec.feed(i) for i in tok.encode(text)] + [dec.flush()]
    assert "".join(pieces) == text
    assert "\ufffd" not in "".join(pieces) or "\ufffd" in text


def test_compresses_english(tok):
    text = default_corpus()[:20000]
    assert len(tok.encode(text)) < len(text) / 1.8


def test_save_load_and_deterministic_training(tmp_path):
    docs = corpus_documents()[:10]
    a = Tokenizer.train(docs, vocab_size=300)
    b = Tokenizer.train(docs, vocab_size=300)
    assert a.vocab_size == 300
    assert a.to_str() == b.to_str()
    a.save(tmp_path / "t.json")
    c = Tokenizer.load(tmp_path / "t.json")
    s = "Some text ✓ with 🙂"
    assert c.encode(s) == a.encode(s) and c.decode(c.encode(s)) == s


def test_training_too_little_text_is_an_error():
    with pytest.raises(ValueError, match="tokens, not 512"):
        Tokenizer.train(["tiny"], vocab_size=512)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer"):
        Tokenizer.load(bad)


def test_batches_are_shifted_windows(tok):
    import torch

    data = torch.arange(1000)
    tr, va = train_val_split(data, 0.1)
    assert len(tr) == 900 and len(va) == 100 and va[0] == 900
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(tr, 4, 16, g)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert int(y.max()) < 900
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(get_batch(tr, 4, 16, g1)[0], get_batch(tr, 4, 16, g2)[0])


def test_lone_surrogates_are_a_clear_error():
    """Lone surrogates are not UTF-8 text: a ValueError that says so, not a crash inside tokenizers."""
    with pytest.raises(ValueError, match="lone surrogate"):
        Tokenizer.default().encode("ok \ud800")


@pytest.mark.parametrize("ids", [[-1], [-512], [512], [2**70], [1.9], ["65"], [True]])
def test_decode_rejects_what_is_not_a_token_id(ids):
    with pytest.raises(ValueError, match="token id"):
        Tokenizer.default().decode(ids)


def test_stream_decoder_takes_any_integer():
    import numpy as np
    import torch

    tok = Tokenizer.default()
    ids = tok.encode("héllo")
    for convert in (int, np.int64, torch.tensor):
        dec = tok.stream_decoder()
        assert "".join(dec.feed(convert(i)) for i in ids) + dec.flush() == "héllo"


def test_encode_batch_names_a_lone_surrogate():
    tok = Tokenizer.default()
    with pytest.raises(ValueError, match=r"text 1 holds the lone surrogate '\\ud800' at index 2"):
        tok.encode_batch(["fine", "ab\ud800"])
    with pytest.raises(TypeError, match="list of str"):
        tok.encode_batch([None])
    assert tok.encode_batch(["a b", "c"]) == [tok.encode("a b"), tok.encode("c")]


def test_text_never_gives_a_special_token_unless_allowed(tok):
    text = f"user text with {EOT} inside"
    ids = tok.encode(text)
    assert tok.eot_id not in ids and tok.decode(ids) == text
    assert tok.eot_id in tok.encode(text, allow_special=True)
    assert tok.encode_batch([text, EOT]) == [ids, tok.encode(EOT)]
