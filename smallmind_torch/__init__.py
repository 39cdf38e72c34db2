"""smallmind-torch: a small GPT made fast phase by phase, measured with the PyTorch profiler."""
from .config import FORMS, PHASES, ModelConfig, OptConfig
from .model import GPT

__all__ = ["GPT", "ModelConfig", "OptConfig", "PHASES", "FORMS"]
__version__ = "0.1.0"
