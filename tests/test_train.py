"""Training: loss goes down; checkpoints save, load and resume exactly."""
import json
import math

import pytest
import torch

from smallmind_torch.train.checkpoint import (CheckpointError, CheckpointNotFoundError, load_checkpoint,
                                              load_train_state, read_meta, save_checkpoint)
from smallmind_torch.config import ModelConfig
from smallmind_torch.train.tokenizer import Tokenizer
from smallmind_torch.train import TrainConfig, lr_at, make_optimizer, train

TINY = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)


def tiny_cfg(out_dir, **kw):
    base = dict(steps=30, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=5,
                eval_interval=10, eval_iters=4, out_dir=str(out_dir), seed=7,
                threads=1)  # 1 thread: tiny matmuls, and no OpenMP stalls on shared cores
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    result = train(tiny_cfg(out), TINY, progress=False)
    return out, result


def test_short_run_lowers_the_loss(trained):
    _, r = trained
    assert r["step"] == 30 and r["steps_run"] == 30
    hist = r["history"]
    assert [h["step"] for h in hist] == [10, 20, 30]
    assert r["val_loss"] < math.log(512) - 0.3          # better than uniform guessing
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert r["val_loss"] == hist[-1]["val_loss"] and r["time_s"] > 0
    assert r["world_size"] == 1 and r["rank"] == 0           # not under torchrun: no group


def test_checkpoint_loads_with_same_logits(trained):
    out, r = trained
    model, tok, meta = load_checkpoint(out)
    assert meta["step"] == 30 and meta["model_config"] == TINY
    assert meta["extra"]["train_config"]["steps"] == 30
    assert tok.to_str() == Tokenizer.default().to_str()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # still tied
    idx = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), r["model"](idx), rtol=0, atol=0)
    assert set(json.loads((out / "config.json").read_text())) >= {"format", "model_config", "step"}


def test_resume_continues_exactly(tmp_path):
    whole = train(tiny_cfg(tmp_path / "whole", steps=20), TINY, progress=False)
    part = train(tiny_cfg(tmp_path / "split", steps=20), TINY, progress=False, stop_at=10)
    assert part["step"] == 10
    state = load_train_state(tmp_path / "split")
    assert state["step"] == 10
    steps = {float(s["step"]) for s in state["optimizer"]["state"].values()}
    assert steps == {10.0}                                # Adam moments saved after 10 steps
    rest = train(tiny_cfg(tmp_path / "split", steps=20), resume=True, progress=False)
    assert rest["step"] == 20 and rest["steps_run"] == 10
    assert [h["step"] for h in rest["history"]] == [10, 20]
    a, b = whole["model"].state_dict(), rest["model"].state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7, msg=k)
    assert rest["val_loss"] == pytest.approx(whole["val_loss"], abs=1e-5)
    # resuming a finished run does nothing more
    again = train(tiny_cfg(tmp_path / "split", steps=20), resume=True, progress=False)
    assert again["steps_run"] == 0 and again["step"] == 20


def test_resume_rejects_another_shape(trained, tmp_path):
    out, _ = trained
    with pytest.raises(ValueError, match="resume"):
        train(tiny_cfg(out, steps=40), ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32),
              resume=True, progress=False)


def test_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lr_at(100, cfg) == pytest.approx(1e-4) and lrs[-1] > 1e-4


def test_weight_decay_on_matrices_only():
    from smallmind_torch.model import GPT

    model = GPT(TINY)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())   # tied weight counted once


def test_checkpoint_errors(tmp_path, trained):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        load_checkpoint(tmp_path / "empty")
    src, _ = trained
    model, tok, _ = load_checkpoint(src)
    bad = save_checkpoint(tmp_path / "bad", model, tok, step=3)
    with pytest.raises(CheckpointError, match="no training state"):
        load_train_state(bad)
    read_meta(bad)["files"]["weights"].write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt checkpoint"):
        load_checkpoint(bad)
    (bad / "config.json").write_text("{oops")
    with pytest.raises(CheckpointError, match="cannot parse"):
        load_checkpoint(bad)
    ok = save_checkpoint(tmp_path / "ok", model, tok, step=3)   # replacing works too
    save_checkpoint(ok, model, tok, step=4)
    assert load_checkpoint(ok)[2]["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("world", [1, 2, 4])
def test_rank_shards_tile_the_global_batch(world):
    """Each data-parallel rank cuts its rows from the one global batch, and the batch RNG
    advances as in one process: the batches do not depend on the number of processes."""
    from smallmind_torch.train.corpus import get_batch
    from smallmind_torch.train.distributed import DistContext

    data = torch.arange(1000)
    g_one = torch.Generator().manual_seed(3)
    full = [get_batch(data, 8, 16, g_one) for _ in range(3)]
    gens = [torch.Generator().manual_seed(3) for _ in range(world)]
    for x, y in full:
        shards = [get_batch(data, 8, 16, g, rows=DistContext(rank=r, world_size=world).rows(8))
                  for r, g in enumerate(gens)]
        assert all(s[0].shape == (8 // world, 16) for s in shards)
        assert torch.equal(torch.cat([s[0] for s in shards]), x)
        assert torch.equal(torch.cat([s[1] for s in shards]), y)
    assert all(torch.equal(g.get_state(), g_one.get_state()) for g in gens)
