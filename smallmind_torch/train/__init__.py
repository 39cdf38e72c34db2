"""Training half: the corpus and its batches, the tokenizer, the training loop, checkpoints.

    corpus.py       the default corpus (pydoc topics), train/val split, nanoGPT-style batches
    tokenizer.py    byte-level BPE with exactly vocab_size tokens, streaming decoder
    loop.py         TrainConfig, the learning-rate schedule, train() (resumable; DDP under torchrun)
    distributed.py  the process group under torchrun, failing together, one-line comm errors
    checkpoint.py   the checkpoint directory format
"""
from .loop import (TrainConfig, TrainingDiverged, estimate_loss, lm_loss, lr_at, make_optimizer,
                   train)

__all__ = ["TrainConfig", "TrainingDiverged", "train", "lr_at", "make_optimizer", "estimate_loss",
           "lm_loss"]
