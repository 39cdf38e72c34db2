import os

import pytest
import torch

# "max" takes the first candidate that runs instead of timing them (tuning.py), so the
# presets under test do not depend on a measurement; test_max.py tests the measurement.
os.environ.setdefault("SMALLMIND_MAX", "first")
# The `compile` form captures its graphs with Dynamo but runs them without Inductor's code
# generation (a minute per graph here); test_compiled.py compiles with Inductor once.
os.environ.setdefault("SMALLMIND_COMPILE_BACKEND", "eager")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
