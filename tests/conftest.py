import os

import pytest
import torch

# "max" takes the first candidate that runs instead of timing them (tuning.py), so the
# presets under test do not depend on a measurement; test_max.py tests the measurement.
os.environ.setdefault("SMALLMIND_MAX", "first")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
