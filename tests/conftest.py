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


@pytest.fixture(autouse=True)
def _fresh_compile_cache():
    """torch.compile caches graphs per function for the whole process, up to a limit: a test
    that compiled something leaves a clean cache to the next."""
    from smallmind_torch.compiled import compiled_graphs

    before = compiled_graphs()
    yield
    if compiled_graphs() != before:
        torch._dynamo.reset()
