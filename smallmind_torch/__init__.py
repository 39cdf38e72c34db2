"""smallmind-torch: a small GPT made fast phase by phase, measured with the PyTorch profiler.

The model half is flat, in reading order: config, phases, tuning, check, runtime,
weight_formats, forms, attention, model, workspace, kv_cache, fused_decode (decode_layout),
compiled, generation, hf, labels, threads, paths;
the C++ ops and their bindings are in ops/ (sources in csrc/). The other halves are packages:
train/, study/ (protocol/, measure/, peers/, report/: it imports the model half, never the
other way round), cli/. docs/study.md has the study's protocol, the switch table and the
layout.
"""
from .config import FORMS, PHASES, ModelConfig, OptConfig, presets
from .model import GPT

__all__ = ["GPT", "ModelConfig", "OptConfig", "PHASES", "FORMS", "presets"]
__version__ = "0.1.0"
