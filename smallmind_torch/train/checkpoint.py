"""Checkpoints: one directory holding everything needed to generate or resume training.

```
DIR/config.json                 {"format": "smallmind-checkpoint", "version": 3,
                                 "model_config": {...}, "step": N, "extra": {...},
                                 "files": {"weights": ..., "tokenizer": ..., "train_state": ...},
                                 "sha256": {"weights": ..., "tokenizer": ..., "train_state": ...,
                                            "model_config": ...}}
DIR/model-<id>.safetensors      the weights (safetensors `save_model`: the tied lm_head/wte once)
DIR/tokenizer-<id>.json         the tokenizer (Hugging Face tokenizers JSON)
DIR/train_state-<id>.pt         optional: optimizer state, step, RNG states, for resuming
```

Saving never touches the files of the checkpoint already there: the new files get a new
<id>, and replacing config.json (one atomic rename) is the moment the new checkpoint takes
over. Nothing config.json names is ever deleted: after the rename the files of the previous
checkpoint (those its config.json named) and leftovers of interrupted saves are; if the save
is interrupted, only the files this save wrote that config.json does not name are. So at every
instant of a save, interrupted by Ctrl-C, SIGKILL or a full disk, config.json names a complete
checkpoint: the old one or the new one. A directory holding anything else is not written to.
Loading verifies every file and the model shape against the hashes recorded at save time (a
missing hash fails the load). Version 1 (fixed file names, no hashes) and version 2 (hashes of
the weights and the model shape only) directories still load.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..config import ModelConfig
from ..model import GPT
from ..paths import PROBE_PREFIX
from .tokenizer import Tokenizer

FORMAT = "smallmind-checkpoint"
VERSION = 3
CONFIG_FILE = "config.json"
VERSION_1_FILES = {"weights": "model.safetensors", "tokenizer": "tokenizer.json",
                   "train_state": "train_state.pt"}
# What a save or the training's write probe leaves behind when it is killed: the only files of a
# directory without config.json that mark it as ours
_OWN_FILE = re.compile(r"^(model-[0-9a-f]{12}\.safetensors|tokenizer-[0-9a-f]{12}\.json|"
                       r"train_state-[0-9a-f]{12}\.pt|\.config\.json\.tmp-[0-9a-f]{12}|"
                       rf"{re.escape(PROBE_PREFIX)}\d+)$")
# The hashes each version records (and a load requires)
HASHED = {1: (), 2: ("weights", "model_config"),
          3: ("weights", "tokenizer", "train_state", "model_config")}
DEFAULT_CHECKPOINT = "checkpoints/seed"  # where `smallmind train` writes and the other commands look


class CheckpointError(RuntimeError):
    """A checkpoint directory that cannot be read or written (corrupt, incomplete, wrong format)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path."""


def is_checkpoint(path: "str | os.PathLike") -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def model_config_from_dict(d: dict) -> ModelConfig:
    if not isinstance(d, dict):
        raise TypeError(f"model_config must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in d.items() if k in known})


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_config(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _named_files(path: Path) -> "set[str] | None":
    """The files the config.json in `path` names (None: no config.json, or not ours)."""
    try:
        meta = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    files = VERSION_1_FILES if meta.get("version") == 1 else meta.get("files")
    return {v for v in files.values() if isinstance(v, str)} if isinstance(files, dict) else set()


def check_target(path: "str | os.PathLike") -> Path:
    """Raise CheckpointError unless `path` is a place a checkpoint may be written: missing, an
    empty directory, one of our checkpoints, or a directory holding only what an interrupted
    save of ours left. Anything else (a Hugging Face model directory, say) is never written to,
    so no file of it is ever replaced or deleted."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} exists and is not a directory")
    if not path.is_dir() or _named_files(path) is not None:
        return path
    foreign = sorted(e.name for e in path.iterdir() if not _OWN_FILE.match(e.name))
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise CheckpointError(f"{path} is not empty and is not a smallmind checkpoint (it holds "
                              f"{shown}); choose a new or empty directory")
    return path


def save_checkpoint(path: "str | os.PathLike", model: torch.nn.Module, tokenizer: Tokenizer,
                    optimizer: "torch.optim.Optimizer | None" = None, step: int = 0,
                    extra: "dict | None" = None, train_state: "dict | None" = None) -> Path:
    """Write a checkpoint at directory `path`, replacing any checkpoint there (see above).

    `extra` must be JSON-serializable (it goes into config.json); `train_state` may hold
    tensors (RNG states...) and is stored with the optimizer state. Raises CheckpointError
    with the reason when the directory cannot be written (permissions, full disk) or holds
    anything but a checkpoint (check_target)."""
    from safetensors.torch import save_model

    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError("model must have a ModelConfig in .config")
    path = check_target(path)
    previous = _named_files(path) or set()  # the files of the checkpoint there, if any
    uid = uuid.uuid4().hex[:12]
    files = {"weights": f"model-{uid}.safetensors", "tokenizer": f"tokenizer-{uid}.json"}
    if optimizer is not None or train_state:
        files["train_state"] = f"train_state-{uid}.pt"
    tmp_config = path / f".config.json.tmp-{uid}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        save_model(model, str(path / files["weights"]))
        tokenizer.save(path / files["tokenizer"])
        if "train_state" in files:
            state = dict(train_state or {})
            state["step"] = int(step)
            if optimizer is not None:
                state["optimizer"] = optimizer.state_dict()
            torch.save(state, path / files["train_state"])
        for name in files.values():
            _fsync(path / name)
        model_config = asdict(config)
        sha = {key: _sha256_file(path / name) for key, name in files.items()}
        meta = {"format": FORMAT, "version": VERSION, "model_config": model_config,
                "step": int(step), "extra": extra or {}, "files": files,
                "sha256": {**sha, "model_config": _sha256_config(model_config)}}
        tmp_config.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _fsync(tmp_config)
        os.replace(tmp_config, path / CONFIG_FILE)  # the commit
        _fsync(path)
    except BaseException as exc:
        # Whatever config.json names now stays (the commit may have happened just before the
        # interruption); the rest of what this save wrote goes
        named = _named_files(path) or set()
        for name in [*files.values(), tmp_config.name]:
            if name not in named:
                (path / name).unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, (CheckpointError, TypeError)):
            # OSError (permissions, no space left), torch's and safetensors' writer errors
            raise CheckpointError(f"cannot write a checkpoint in {path}: {exc}") from exc
        raise
    keep = set(files.values())
    for entry in path.iterdir():  # the previous checkpoint's files, leftovers of killed saves
        if entry.name not in keep and (entry.name in previous or _OWN_FILE.match(entry.name)):
            entry.unlink(missing_ok=True)
    return path


def read_meta(path: "str | os.PathLike") -> dict:
    """config.json of a checkpoint, checked; raises CheckpointNotFoundError / CheckpointError.
    `meta["files"]` maps weights / tokenizer / train_state to paths."""
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
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r} is not one this code "
                              f"understands (1..{VERSION})")
    raw_config = meta.get("model_config")
    try:
        meta["model_config"] = model_config_from_dict(raw_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: bad model_config: {e}") from e
    files = VERSION_1_FILES if version == 1 else meta.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) and "/" not in v
                                              for v in files.values()):
        raise CheckpointError(f"corrupt checkpoint {path}: bad 'files' entry in {CONFIG_FILE}")
    meta["files"] = {k: path / v for k, v in files.items()}
    sha = meta.get("sha256") if version >= 2 else {}
    sha = sha if isinstance(sha, dict) else {}
    hashed = [key for key in HASHED[version] if key in meta["files"] or key == "model_config"]
    missing = [key for key in hashed if not isinstance(sha.get(key), str)]
    if missing:
        raise CheckpointError(f"corrupt checkpoint {path}: {CONFIG_FILE} records no hash of "
                              f"{', '.join(missing)} (a version {version} checkpoint has one)")
    if version >= 2 and sha["model_config"] != _sha256_config(raw_config):
        raise CheckpointError(f"corrupt checkpoint {path}: model_config in {CONFIG_FILE} does "
                              "not match the hash recorded when it was saved (edited?)")
    meta["sha256"] = sha
    meta["path"] = str(path)
    return meta


def _weights_shape_problem(weights: Path, config: ModelConfig) -> "str | None":
    """Compare the shape the weights' header implies with config, before building anything."""
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    emb = shapes.get("transformer.wte.weight") or shapes.get("lm_head.weight")
    wpe = shapes.get("transformer.wpe.weight")
    if emb is None or wpe is None or len(emb) != 2 or len(wpe) != 2:
        return "the weights have no token or position embedding"
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"transformer\.h\.(\d+)\.", k))}
    found = dict(n_layer=len(layers), n_embd=emb[1], vocab_size=emb[0], block_size=wpe[0])
    wanted = {k: getattr(config, k) for k in found}
    return None if found == wanted else f"{CONFIG_FILE} says {wanted} but the weights are {found}"


def _verify(meta: dict, name: str) -> None:
    """Raise CheckpointError unless file `name` has the hash recorded for it (where the
    checkpoint's version records one)."""
    expected = meta["sha256"].get(name)
    if expected is not None and _sha256_file(meta["files"][name]) != expected:
        raise CheckpointError(f"corrupt checkpoint {meta['path']}: {meta['files'][name].name} "
                              "does not match the hash recorded when it was saved")


def load_checkpoint(path: "str | os.PathLike", map_location: "str | torch.device" = "cpu"):
    """Load `(model, tokenizer, meta)` from a checkpoint directory.

    `meta` holds config.json's content (`model_config` as a ModelConfig, `step`, `extra`,
    `files`) plus `path`. The model is in eval mode, in the default ('reference') phase."""
    from safetensors.torch import load_model

    path = Path(path)
    meta = read_meta(path)
    files = meta["files"]
    for name in ("weights", "tokenizer"):
        if not files[name].is_file():
            raise CheckpointError(f"incomplete checkpoint {path}: {files[name].name} is missing")
        _verify(meta, name)
    try:
        tokenizer = Tokenizer.load(files["tokenizer"])
    except ValueError as e:
        raise CheckpointError(f"corrupt checkpoint {path}: {e}") from e
    config: ModelConfig = meta["model_config"]
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"checkpoint {path}: tokenizer has {tokenizer.vocab_size} tokens, "
                              f"model vocab_size is {config.vocab_size}")
    try:
        problem = _weights_shape_problem(files["weights"], config)
    except Exception as e:  # safetensors raises several types for bad files
        raise CheckpointError(f"corrupt checkpoint {path}: cannot read {files['weights'].name}: {e}") from e
    if problem:
        raise CheckpointError(f"corrupt checkpoint {path}: {problem}")
    model = GPT(config)
    try:
        load_model(model, str(files["weights"]), strict=True, device=str(map_location))
    except Exception as e:
        raise CheckpointError(f"corrupt checkpoint {path}: cannot load {files['weights'].name}: {e}") from e
    model.eval()
    return model, tokenizer, meta


def load_train_state(path: "str | os.PathLike", map_location: "str | torch.device" = "cpu") -> dict:
    """The training state of a checkpoint: `step`, `optimizer` (a state_dict), RNG states..."""
    meta = read_meta(path)
    f = meta["files"].get("train_state")
    if f is None or not f.is_file():
        raise CheckpointError(f"checkpoint {path} has no training state; it cannot be resumed")
    _verify(meta, "train_state")
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"corrupt checkpoint {path}: cannot load {f.name}: {e}") from e


__all__ = ["CheckpointError", "CheckpointNotFoundError", "save_checkpoint", "load_checkpoint",
           "load_train_state", "read_meta", "is_checkpoint", "check_target",
           "model_config_from_dict"]
