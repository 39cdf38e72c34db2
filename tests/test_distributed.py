"""Data-parallel training under torchrun (2 CPU processes, gloo): the same steps as one process
with the same global batch, checkpoints that resume under another process count, rank 0 alone
writing and talking, one-line errors instead of hangs. Tiny shape, 1 thread per process."""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from smallmind_torch import cli
from smallmind_torch.train import TrainConfig, train
from smallmind_torch.train.checkpoint import load_checkpoint, load_train_state
from smallmind_torch.train.distributed import CommLost, DistContext, comm_errors

TINY_ARGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32"]
# A 6-step schedule (warm-up, then cosine), checkpoints at 3 and 6, global batch 4 = 2 x 2 rows
COMMON = ["--steps", "6", "--batch-size", "4", "--eval-interval", "3", "--eval-iters", "2",
          "--warmup-steps", "2", "--seed", "7", "--threads", "1", "--no-progress",
          "--sample-tokens", "0", *TINY_ARGS]
# 2 processes sum their gradients in another order than 1 process: float rounding, which Adam
# carries into the weights. Measured: ~3e-6 after 6 steps; a different batch or a missed
# gradient average moves them by ~1e-3 (checked below against the weights 3 steps earlier).
ATOL, RTOL = 2e-5, 1e-4
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def torchrun(cwd: Path, *args: str, nproc: int = 2):
    """`smallmind train ARGS` under torchrun in `cwd`: (exit code, {rank: (stdout, stderr)},
    plus torchrun's own stderr under "launcher").
    --standalone picks a free port itself; each rank's output goes to its own log file."""
    logs = cwd.parent / f"logs-{cwd.name}"
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "--log-dir", str(logs), "--redirects", "3",
           "-m", "smallmind_torch.cli", "train", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, launcher_err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # a hang is a failure, and leaves no workers behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    out = {}
    for rank in range(nproc):
        (rank_dir,) = logs.glob(f"*/attempt_0/{rank}")
        out[rank] = ((rank_dir / "stdout.log").read_text(), (rank_dir / "stderr.log").read_text())
    out["launcher"] = launcher_err
    return proc.returncode, out


def weights(path):
    return load_checkpoint(path)[0].state_dict()


def assert_same_run(a, b):
    """Two checkpoints of the same steps: same step, schedule and losses, same weights."""
    wa, wb = weights(a), weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=RTOL, atol=ATOL, msg=k)
    ha, hb = load_train_state(a)["history"], load_train_state(b)["history"]
    assert [(h["step"], h["lr"]) for h in ha] == [(h["step"], h["lr"]) for h in hb]
    for x, y in zip(ha, hb):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-5)
        assert x["val_loss"] == pytest.approx(y["val_loss"], abs=1e-5)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """1 process (this one, as `smallmind train` runs it): 6 steps straight, and the same
    schedule cut after step 3."""
    base = tmp_path_factory.mktemp("one")
    assert cli.main(["train", *COMMON, "--out", str(base / "whole")]) == 0
    assert cli.main(["train", *COMMON, "--out", str(base / "half"), "--stop-at", "3"]) == 0
    return base / "whole", base / "half"


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_and_resume_in_one(one_process, tmp_path):
    whole, half = one_process
    work = tmp_path / "work"
    work.mkdir()
    code, out = torchrun(work, *COMMON, "--out", "two", "--stop-at", "3")
    assert code == 0, out
    # the same 3 steps as 1 process with the same global batch
    assert_same_run(work / "two", half)
    wh, w3 = weights(whole), weights(half)  # the tolerance is far below what a step changes
    assert max((wh[k] - w3[k]).abs().max().item() for k in wh) > 50 * ATOL
    assert load_checkpoint(work / "two")[2]["extra"]["world_size"] == 2
    # rank 0 alone talks and writes: one checkpoint, nothing else anywhere in the directory
    assert "step 3 (3 this run)" in out[0][0] and "on 2 processes" in out[0][0]
    assert out[1] == ("", ""), out[1]
    assert sorted(p.name for p in work.iterdir()) == ["two"]
    names = sorted(p.name.split("-")[0] for p in (work / "two").iterdir())
    assert names == ["config.json", "model", "tokenizer", "train_state"]
    # the 2-process checkpoint resumes in 1 process: the same schedule and batches as 6 steps
    assert cli.main(["train", *COMMON, "--out", str(work / "two"), "--resume"]) == 0
    assert_same_run(work / "two", whole)


@pytest.mark.slow
def test_a_one_process_checkpoint_resumes_under_two(one_process, tmp_path):
    whole, half = one_process
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(half, work / "ck")
    code, out = torchrun(work, *COMMON, "--out", "ck", "--resume")
    assert code == 0, out
    assert "step 6 (3 this run)" in out[0][0] and out[1] == ("", "")
    assert_same_run(work / "ck", whole)


@pytest.mark.slow
def test_a_rank_that_fails_alone_stops_every_rank_with_one_line(tmp_path):
    """Rank 0 alone checks the checkpoint directory: when it cannot write there, rank 1 stops
    too (rather than wait for it at the first collective) and the job prints one line."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "file").write_text("")
    code, out = torchrun(work, *COMMON, "--out", "file/ck")
    assert code == 1
    assert out[0][1].startswith("smallmind: error: cannot write checkpoints to file/ck")
    assert out[0][1].count("\n") == 1 and out[1] == ("", "")


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_batch_that_does_not_split_is_a_one_line_error_before_any_rendezvous(
        rank, tmp_path, monkeypatch, capsys):
    """What torchrun sets, without MASTER_ADDR: a rendezvous would fail, so the error comes
    before it. Rank 0 says it in one line, the other ranks exit with the same code silently."""
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", rank)
    args = ["train", *COMMON, "--out", str(tmp_path / "ck")]
    args[args.index("--batch-size") + 1] = "5"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    if rank == "0":
        assert err == ("smallmind: error: batch_size 5 does not split evenly over 2 processes "
                       "(the global batch is divided among them): use a multiple of 2, "
                       "e.g. 4 or 6\n")
    else:
        assert err == ""
    assert not (tmp_path / "ck").exists()
    with pytest.raises(ValueError, match="does not split evenly over 2 processes"):
        train(TrainConfig(batch_size=5, out_dir=str(tmp_path / "ck")), progress=False)


def test_a_lost_peer_is_one_line_and_other_errors_pass():
    ctx = DistContext(rank=1, world_size=2, ddp=True, timeout_s=5)
    gloo = ("[/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out "
            "waiting 5000ms for recv operation to complete")
    with pytest.raises(CommLost, match=r"^rank 1: lost the other processes \(Timed out waiting "
                                       r"5000ms for recv operation to complete\); .* 5 s timeout"):
        with comm_errors(ctx):
            raise RuntimeError(gloo)
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        with comm_errors(ctx):
            raise RuntimeError("shape mismatch")
    with pytest.raises(RuntimeError, match="gloo"):  # one process: nothing to lose
        with comm_errors(DistContext()):
            raise RuntimeError(gloo)


def test_ranks_and_devices():
    assert [DistContext(rank=r, world_size=4).rows(8) for r in range(4)] == \
        [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert DistContext().rows(8) == slice(0, 8) and DistContext().is_main
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        train(TrainConfig(device="gpu", save=False), progress=False)
    with pytest.raises(ValueError, match="dist_timeout"):
        TrainConfig(dist_timeout=0)
