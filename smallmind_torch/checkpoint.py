"""Checkpoints: one directory holding everything needed to generate or resume training.

```
DIR/config.json        {"format": "smallmind-checkpoint", "version": 1, "model_config": {...},
                        "step": N, "extra": {...}}
DIR/model.safetensors  the weights (safetensors `save_model`: the tied lm_head/wte is stored once)
DIR/tokenizer.json     the tokenizer (Hugging Face tokenizers JSON)
DIR/train_state.pt     optional: optimizer state, step, RNG states (torch.save), for resuming
```

A checkpoint is written into a temporary sibling directory and then moved into place, so an
interrupted save never leaves a half-written checkpoint where the old one was.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import asdict, fields
from pathlib import Path

import torch

from .config import ModelConfig
from .tokenizer import Tokenizer

FORMAT = "smallmind-checkpoint"
VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TRAIN_STATE_FILE = "train_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be read (corrupt, incomplete, wrong format)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path."""


def is_checkpoint(path: "str | os.PathLike") -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def model_config_from_dict(d: dict) -> ModelConfig:
    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in d.items() if k in known})


def save_checkpoint(path: "str | os.PathLike", model: torch.nn.Module, tokenizer: Tokenizer,
                    optimizer: "torch.optim.Optimizer | None" = None, step: int = 0,
                    extra: "dict | None" = None, train_state: "dict | None" = None) -> Path:
    """Write a checkpoint directory at `path` (replacing any checkpoint there).

    `extra` must be JSON-serializable (it goes into config.json); `train_state` may hold
    tensors (RNG states...) and is stored with the optimizer state in train_state.pt.
    """
    from safetensors.torch import save_model

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError("model must have a ModelConfig in .config")
    meta = {"format": FORMAT, "version": VERSION, "model_config": asdict(config),
            "step": int(step), "extra": extra or {}}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        tokenizer.save(tmp / TOKENIZER_FILE)
        if optimizer is not None or train_state:
            state = dict(train_state or {})
            state["step"] = int(step)
            if optimizer is not None:
                state["optimizer"] = optimizer.state_dict()
            torch.save(state, tmp / TRAIN_STATE_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        old = None
        if path.exists():
            if not path.is_dir():
                raise CheckpointError(f"{path} exists and is not a directory")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: "str | os.PathLike") -> dict:
    """config.json of a checkpoint, checked; raises CheckpointNotFoundError / CheckpointError."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"no checkpoint at {path} (train one with `smallmind train`)")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise CheckpointNotFoundError(f"{path} is not a checkpoint: {CONFIG_FILE} is missing")
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: cannot parse {CONFIG_FILE}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{cfg} is not a smallmind checkpoint config")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {meta.get('version')} is newer than "
                              f"this code understands ({VERSION})")
    try:
        meta["model_config"] = model_config_from_dict(meta["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: bad model_config: {e}") from e
    meta["path"] = str(path)
    return meta


def load_checkpoint(path: "str | os.PathLike", map_location: "str | torch.device" = "cpu"):
    """Load `(model, tokenizer, meta)` from a checkpoint directory.

    `meta` holds config.json's content (`model_config` as a ModelConfig, `step`, `extra`)
    plus `path`. The model is in eval mode, in the default ('reference') phase.
    """
    from safetensors.torch import load_model

    from .model import GPT

    path = Path(path)
    meta = read_meta(path)
    for name in (WEIGHTS_FILE, TOKENIZER_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"incomplete checkpoint {path}: {name} is missing")
    try:
        tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
    except ValueError as e:
        raise CheckpointError(f"corrupt checkpoint {path}: {e}") from e
    config: ModelConfig = meta["model_config"]
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"checkpoint {path}: tokenizer has {tokenizer.vocab_size} tokens, "
                              f"model vocab_size is {config.vocab_size}")
    model = GPT(config)
    try:
        load_model(model, str(path / WEIGHTS_FILE), strict=True, device=str(map_location))
    except Exception as e:  # safetensors raises several types for bad files
        raise CheckpointError(f"corrupt checkpoint {path}: cannot load {WEIGHTS_FILE}: {e}") from e
    model.eval()
    return model, tokenizer, meta


def load_train_state(path: "str | os.PathLike", map_location: "str | torch.device" = "cpu") -> dict:
    """The train_state.pt of a checkpoint: `step`, `optimizer` (a state_dict), RNG states..."""
    f = Path(path) / TRAIN_STATE_FILE
    if not f.is_file():
        raise CheckpointError(f"checkpoint {path} has no training state ({TRAIN_STATE_FILE}); "
                              f"it cannot be resumed")
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"corrupt checkpoint {path}: cannot load {TRAIN_STATE_FILE}: {e}") from e


__all__ = ["CheckpointError", "CheckpointNotFoundError", "save_checkpoint", "load_checkpoint",
           "load_train_state", "read_meta", "is_checkpoint", "model_config_from_dict"]
