"""The `smallmind` CLI: train and generate (tiny shapes, tmp dirs)."""
import pytest
import torch

from smallmind_torch import cli
from smallmind_torch.cli import core
from smallmind_torch.config import ModelConfig, presets
from smallmind_torch.train.checkpoint import load_checkpoint, save_checkpoint
from smallmind_torch.train.tokenizer import Tokenizer

TINY = ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=32)
TINY_ARGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes: one thread is faster and avoids OpenMP stalls on shared cores."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from smallmind_torch.model import GPT

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cli") / "tiny"
    save_checkpoint(path, GPT(TINY), Tokenizer.default(), step=0)
    return path


def test_commands_registry():
    assert {"train", "generate", "bench", "profile", "build-ops", "peers", "study"} <= set(core.COMMANDS)
    with pytest.raises(ValueError):
        core.register(core.Command("train", "dup", lambda p: None, lambda a: 0))
    assert cli.main(["--help"]) == 0
    assert cli.main([]) == 2                      # a command is required
    assert cli.main(["no-such-command"]) == 2


def test_generate_streams_the_greedy_continuation(tiny_ckpt, capsys):
    rc = cli.main(["generate", "--checkpoint", str(tiny_ckpt), "--prompt", "The value of",
                   "--max-new-tokens", "12", "--temperature", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    model, tok, _ = load_checkpoint(tiny_ckpt)
    idx = torch.tensor([tok.encode("The value of")])
    expected = tok.decode(model.generate(idx, max_new_tokens=12, temperature=0.0)[0].tolist())
    assert out == expected + "\n"


@pytest.mark.parametrize("cli_phase", ["phase0", "phase1", "max"])  # no custom-op build
def test_generate_in_other_phases_gives_the_same_greedy_text(tiny_ckpt, capsys, cli_phase):
    args = ["generate", "--checkpoint", str(tiny_ckpt), "--prompt", "x = 1", "--max-new-tokens", "8",
            "--temperature", "0"]
    assert cli.main(args) == 0
    ref = capsys.readouterr().out
    assert cli.main(args + ["--phase", cli_phase]) == 0
    assert capsys.readouterr().out == ref


def test_generate_sampling_is_seeded_and_crops_long_prompts(tiny_ckpt, capsys):
    long_prompt = "word " * 100                   # far more than block_size=32 tokens
    args = ["generate", "--checkpoint", str(tiny_ckpt), "--prompt", long_prompt,
            "--max-new-tokens", "10", "--temperature", "1.0", "--top-k", "20", "--seed", "3"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith(long_prompt) and len(first) > len(long_prompt)
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first


def test_generate_without_checkpoint_uses_random_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)                   # no checkpoints/seed here
    assert cli.main(["generate", "--prompt", "Hello", "--max-new-tokens", "5", "--threads", "1"]) == 0
    cap = capsys.readouterr()
    assert "weights: random" in cap.err and "no checkpoint" in cap.err
    assert cap.out.startswith("Hello") and len(cap.out) > len("Hello\n")


def test_generate_empty_prompt(tiny_ckpt, capsys):
    assert cli.main(["generate", "--checkpoint", str(tiny_ckpt), "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.endswith("\n")


def test_unknown_phase_is_a_clear_usage_error(tiny_ckpt, capsys):
    rc = cli.main(["generate", "--checkpoint", str(tiny_ckpt), "--phase", "warp9"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unknown phase 'warp9'" in err and all(p in err for p in presets())
    assert "Traceback" not in err


def test_missing_or_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["generate", "--checkpoint", str(tmp_path / "nope")]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("not json")
    assert cli.main(["generate", "--checkpoint", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "corrupt checkpoint" in err and "Traceback" not in err


def test_bad_arguments(tiny_ckpt, capsys):
    assert cli.main(["generate", "--checkpoint", str(tiny_ckpt), "--top-k", "0"]) == 2
    assert cli.main(["train", "--n-embd", "30", "--n-head", "4"]) == 2
    assert "divisible" in capsys.readouterr().err


def test_train_then_resume(tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--batch-size", "4", "--eval-interval", "5", "--eval-iters", "2", "--out", str(out),
              "--no-progress", "--sample-tokens", "16", "--threads", "1", *TINY_ARGS]
    assert cli.main(["train", "--steps", "5", *common]) == 0
    text = capsys.readouterr().out
    assert "val loss" in text and "sample:" in text and str(out) in text
    assert load_checkpoint(out)[2]["step"] == 5
    assert cli.main(["train", "--steps", "8", "--resume", *common]) == 0
    assert "step 8 (3 this run)" in capsys.readouterr().out
    assert cli.main(["generate", "--checkpoint", str(out), "--max-new-tokens", "4"]) == 0
    assert cli.main(["train", "--resume", "--out", str(tmp_path / "none"), "--no-progress"]) == 1
    assert "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("args, code, message", [
    (["--temperature", "nan"], 2, "--temperature must be a number >= 0"),
    (["--prompt", "bad \udcff bytes"], 2, "lone surrogate"),
    (["--max-new-tokens", "10000000000000"], 2, "--max-new-tokens must be <= 1000000"),
])
def test_generate_errors_are_one_line(tiny_ckpt, capsys, args, code, message):
    assert cli.main(["generate", "--checkpoint", str(tiny_ckpt), *args]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resume_with_another_shape_and_a_bad_logdir_are_one_line(tiny_ckpt, tmp_path, capsys):
    import shutil

    out = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, out)
    assert cli.main(["train", "--resume", "--out", str(out), "--n-embd", "64", "--no-progress"]) == 2
    assert "resume: checkpoint in" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cli.main(["profile", "--tiny", "--phase", "reference", "--logdir",
                     str(tmp_path / "file" / "runs"), "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert "cannot write traces to" in err and "Traceback" not in err


def test_a_damaged_checkpoint_is_a_one_line_error(tiny_ckpt, tmp_path, capsys):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_ckpt, bad)
    meta = json.loads((bad / "config.json").read_text())
    meta["model_config"]["n_head"] = 4  # same tensor shapes
    (bad / "config.json").write_text(json.dumps(meta))
    assert cli.main(["generate", "--checkpoint", str(bad), "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err
    assert "does not match the hash" in err and "Traceback" not in err


# every int argument of every command, out of its range: refused in one line before anything runs
NUMBERS = [
    (["train", "--seed", str(2**70)], "--seed must be <="),
    (["train", "--batch-size", str(10**9)], "--batch-size must be <= 65536"),
    (["train", "--block-size", str(10**6)], "--block-size must be <= 16384"),
    (["train", "--stop-at", "0"], "--stop-at must be >= 1"),
    (["train", "--steps", "0"], "--steps must be >= 1"),
    (["profile", "--tiny", "--tokens", "-1"], "--tokens must be >= 1"),
    (["profile", "--tiny", "--row-limit", "0"], "--row-limit must be >= 1"),
    (["generate", "--threads", "100000"], "--threads must be <="),
    (["generate", "--threads", "0"], "--threads must be >= 1"),
    (["generate", "--max-new-tokens", "-1"], "--max-new-tokens must be >= 0"),
    (["generate", "--top-k", "0"], "--top-k must be >= 1"),
    (["bench", "--tiny", "--runs", "0"], "--runs must be >= 1"),
    (["bench", "--tiny", "--new-tokens", "0"], "--new-tokens must be >= 1"),
    (["bench", "--n-layer", "5000"], "--n-layer must be <= 1024"),
    (["peers", "--tiny", "--threads", "1", "100000"], "--threads must be <="),
    (["study", "--tiny", "--prompt-len", "0"], "--prompt-len must be >= 1"),
]


@pytest.mark.parametrize("args, message", NUMBERS, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_every_number_out_of_range_is_one_line(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["bench", "--tiny", "--peers", "--no-machine"],
                                     ["peers", "--tiny", "--quiet"]])
def test_an_unwritable_json_path_is_refused_before_the_run(command, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert cli.main([*command, "--json", str(tmp_path / "file" / "out.json")]) == 2
    err = capsys.readouterr().err
    assert "--json" in err and "cannot write there" in err and "Traceback" not in err
    assert "tokens/s" not in capsys.readouterr().out  # nothing was measured


def test_threads_are_bounded_in_the_library_too():
    from smallmind_torch.threads import MAX_THREADS, threads

    with pytest.raises(ValueError, match=f"from 1 to {MAX_THREADS}"):
        with threads(MAX_THREADS + 1):
            pass
