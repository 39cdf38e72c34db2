"""Checkpoints survive interruption at every step of a save, and a damaged or edited checkpoint
is a clear error, never garbage generated with exit 0."""
import json
import os
import shutil

import pytest
import torch

from smallmind_torch import GPT, ModelConfig, cli
from smallmind_torch.train import TrainConfig, TrainingDiverged, loop, train
from smallmind_torch.train import checkpoint as ckpt
from smallmind_torch.train.tokenizer import Tokenizer

TINY = ModelConfig(n_layer=1, n_head=2, n_embd=32, vocab_size=512, block_size=16)


def _model(seed):
    torch.manual_seed(seed)
    return GPT(TINY)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture
def two_models():
    return _model(1), _model(2)


def _save(path, model, step):
    opt = torch.optim.AdamW(model.parameters())
    return ckpt.save_checkpoint(path, model, Tokenizer.default(), opt, step=step,
                                train_state={"note": torch.tensor([step])})


def test_every_instant_of_a_save_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch,
                                                                       two_models):
    """A SIGKILL at any file-system step: snapshot the directory before each fsync / rename /
    unlink of the save, as a killed process would leave it; every snapshot must load."""
    old, new = two_models
    path = tmp_path / "ck"
    _save(path, old, step=1)
    snapshots = []

    def snapshot(real):
        def wrapped(*args, **kwargs):
            dst = tmp_path / f"snap{len(snapshots)}"
            shutil.copytree(path, dst)
            snapshots.append(dst)
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(os, "fsync", snapshot(os.fsync))
    monkeypatch.setattr(os, "replace", snapshot(os.replace))
    monkeypatch.setattr(type(path), "unlink", snapshot(type(path).unlink))
    _save(path, new, step=2)
    monkeypatch.undo()
    assert len(snapshots) >= 8  # 3 files + config fsynced, the commit, the directory, old files
    steps = []
    for snap in [*snapshots, path]:
        model, _, meta = ckpt.load_checkpoint(snap)
        assert _same_weights(model, old if meta["step"] == 1 else new), snap
        assert ckpt.load_train_state(snap)["note"].item() == meta["step"]
        steps.append(meta["step"])
    assert steps[0] == 1 and steps[-1] == 2 and sorted(steps) == steps
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["config.json", *[f.name for f in ckpt.read_meta(path)["files"].values()]])


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("interrupt_at", range(7))
def test_ctrl_c_during_a_save_keeps_the_old_checkpoint(tmp_path, monkeypatch, two_models,
                                                       interrupt_at, when):
    """A KeyboardInterrupt just before or just after each fsync and rename of a save: the
    directory then holds the old checkpoint or the new one, whole (after the commit's rename,
    nothing the new config.json names may be deleted)."""
    old, new = two_models
    path = tmp_path / "ck"
    _save(path, old, step=1)
    calls = []

    def interrupting(real):
        def wrapped(*args, **kwargs):
            calls.append(real)
            if len(calls) - 1 == interrupt_at and when == "before":
                raise KeyboardInterrupt
            result = real(*args, **kwargs)
            if len(calls) - 1 == interrupt_at:
                raise KeyboardInterrupt
            return result
        return wrapped

    monkeypatch.setattr(os, "fsync", interrupting(os.fsync))
    monkeypatch.setattr(os, "replace", interrupting(os.replace))
    try:
        _save(path, new, step=2)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    model, _, meta = ckpt.load_checkpoint(path)
    assert _same_weights(model, old if meta["step"] == 1 else new)
    commit = 4  # call 4 is the commit (the rename)
    assert meta["step"] == (2 if interrupt_at > commit or (interrupt_at == commit and when == "after")
                            else 1)
    assert ckpt.load_train_state(path)["note"].item() == meta["step"]


def test_a_full_disk_is_a_clear_error_and_keeps_the_old_checkpoint(tmp_path, monkeypatch, two_models):
    old, new = two_models
    path = tmp_path / "ck"
    _save(path, old, step=1)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(ckpt.CheckpointError, match="No space left"):
        _save(path, new, step=2)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path)[2]["step"] == 1


def test_flipped_weight_bytes_are_detected(tmp_path, two_models):
    path = _save(tmp_path / "ck", two_models[0], step=1)
    weights = ckpt.read_meta(path)["files"]["weights"]
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x40
    weights.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="does not match the hash"):
        ckpt.load_checkpoint(path)


def _edit_config(path, **changes):
    meta = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if key in meta:
            meta[key] = value
        else:
            meta["model_config"][key] = value
    (path / "config.json").write_text(json.dumps(meta))


def test_an_edited_model_config_is_detected(tmp_path, two_models):
    path = _save(tmp_path / "ck", two_models[0], step=1)
    _edit_config(path, n_head=4)  # the same tensor shapes: would load and give garbage
    with pytest.raises(ckpt.CheckpointError, match="does not match the hash"):
        ckpt.load_checkpoint(path)


def _as_version_1(path):
    """Rewrite a checkpoint in the version-1 layout (fixed file names, no hashes)."""
    meta = json.loads((path / "config.json").read_text())
    for key, name in ckpt.VERSION_1_FILES.items():
        if key in meta["files"]:
            os.replace(path / meta["files"][key], path / name)
    meta = {k: v for k, v in meta.items() if k not in ("files", "sha256")}
    meta["version"] = 1
    (path / "config.json").write_text(json.dumps(meta))


def test_version_1_checkpoints_load(tmp_path, two_models):
    path = _save(tmp_path / "ck", two_models[0], step=5)
    _as_version_1(path)
    model, _, meta = ckpt.load_checkpoint(path)
    assert meta["step"] == 5 and _same_weights(model, two_models[0])
    assert ckpt.load_train_state(path)["step"] == 5
    _save(path, two_models[1], step=6)  # saving over it upgrades and leaves no v1 file
    assert not any((path / name).exists() for name in ckpt.VERSION_1_FILES.values())
    assert ckpt.load_checkpoint(path)[2]["step"] == 6


@pytest.mark.parametrize("changes, match", [
    (dict(block_size=1_000_000), "the weights are"),    # would allocate a 1 TB mask
    (dict(n_layer=100_000), "the weights are"),         # would build 100,000 blocks
    (dict(n_embd=10**12 + 1, n_head=7), "bad model_config"),  # the divisor list once hung
    (dict(layer_norm_epsilon=-1.0), "layer_norm_epsilon"),
    (dict(layer_norm_epsilon="abc"), "layer_norm_epsilon"),
    (dict(model_config=[1, 2]), "bad model_config"),
    (dict(version="2"), "version '2'"),
    (dict(version=99), "version 99"),
])
def test_a_bad_config_is_a_clear_error_before_anything_is_built(tmp_path, two_models, changes, match):
    path = _save(tmp_path / "ck", two_models[0], step=1)
    _as_version_1(path)  # no config hash: the checks behind it must hold on their own
    _edit_config(path, **changes)
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load_checkpoint(path)


def test_training_stops_on_a_non_finite_loss_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = TrainConfig(steps=8, batch_size=2, eval_interval=2, eval_iters=1, warmup_steps=1,
                      out_dir=str(out))
    train(cfg, TINY, progress=False, stop_at=4)
    real, calls = loop.lm_loss, []

    def diverging(model, x, y):
        calls.append(1)
        loss = real(model, x, y)
        return loss * float("nan") if len(calls) > 1 else loss

    monkeypatch.setattr(loop, "lm_loss", diverging)
    with pytest.raises(TrainingDiverged, match="loss is nan"):
        train(cfg, TINY, resume=True, progress=False)
    monkeypatch.undo()
    assert ckpt.load_checkpoint(out)[2]["step"] == 4
    assert train(cfg, TINY, resume=True, progress=False)["step"] == 8  # and it resumes


@pytest.mark.parametrize("lr", ["nan", "inf", "0", "-1"])
def test_train_rejects_a_non_finite_learning_rate(lr, capsys):
    assert cli.main(["train", "--lr", lr, "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lr must be a finite number > 0" in err and "Traceback" not in err


def test_an_unwritable_out_dir_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = ["train", "--steps", "1", "--no-progress", "--out", str(blocker / "ck"),
            "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "cannot write checkpoints to" in err and "Traceback" not in err


def _foreign_directory(path):
    """A Hugging Face model directory, say: files with the names our version 1 used."""
    path.mkdir()
    files = {"model.safetensors": b"weights", "tokenizer.json": b"{}", "train_state.pt": b"x",
             "config.json": b'{"model_type": "gpt2"}', "notes.txt": b"mine"}
    for name, data in files.items():
        (path / name).write_bytes(data)
    return files


def test_a_directory_of_someone_elses_files_is_never_written(tmp_path, two_models, capsys):
    path = tmp_path / "hf-model"
    files = _foreign_directory(path)
    with pytest.raises(ckpt.CheckpointError, match="is not empty and is not a smallmind checkpoint"):
        _save(path, two_models[0], step=1)
    args = ["train", "--steps", "1", "--no-progress", "--out", str(path),
            "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16"]
    assert cli.main(args) == 1  # refused before training
    err = capsys.readouterr().err
    assert "is not a smallmind checkpoint" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in path.iterdir()} == files


def test_leftovers_of_a_killed_first_save_do_not_block_the_next(tmp_path, two_models):
    path = tmp_path / "ck"
    path.mkdir()
    (path / "model-0123456789ab.safetensors").write_bytes(b"partial")
    (path / ".config.json.tmp-0123456789ab").write_bytes(b"{")
    _save(path, two_models[0], step=1)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["config.json", *[f.name for f in ckpt.read_meta(path)["files"].values()]])


@pytest.mark.parametrize("name", ["tokenizer", "train_state"])
def test_every_file_of_a_checkpoint_is_verified(tmp_path, two_models, name):
    path = _save(tmp_path / "ck", two_models[0], step=1)
    f = ckpt.read_meta(path)["files"][name]
    f.write_bytes(f.read_bytes() + b" ")
    with pytest.raises(ckpt.CheckpointError, match="does not match the hash"):
        ckpt.load_checkpoint(path) if name == "tokenizer" else ckpt.load_train_state(path)


@pytest.mark.parametrize("key", ["weights", "tokenizer", "train_state", "model_config"])
def test_a_missing_hash_fails_the_load(tmp_path, two_models, key):
    path = _save(tmp_path / "ck", two_models[0], step=1)
    meta = json.loads((path / "config.json").read_text())
    del meta["sha256"][key]
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ckpt.CheckpointError, match=f"records no hash of {key}"):
        ckpt.load_checkpoint(path)


def test_version_2_checkpoints_load(tmp_path, two_models):
    """Version 2 recorded the hashes of the weights and the model shape only."""
    path = _save(tmp_path / "ck", two_models[0], step=3)
    meta = json.loads((path / "config.json").read_text())
    meta["version"] = 2
    meta["sha256"] = {k: meta["sha256"][k] for k in ("weights", "model_config")}
    (path / "config.json").write_text(json.dumps(meta))
    model, _, meta = ckpt.load_checkpoint(path)
    assert meta["step"] == 3 and _same_weights(model, two_models[0])
    assert ckpt.load_train_state(path)["step"] == 3
