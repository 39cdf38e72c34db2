"""Op tests on every instruction-set path: the `isa` fixture runs a test once per ISA this CPU
supports (avx512, avx2, scalar: widest first), restoring the selection after it; property tests
draw the ISA instead (`st.sampled_from(ISAS)` and `use_isa`), so each path is fuzzed too."""
import pytest

from helpers import ops_binding_or_skip

_isa = ops_binding_or_skip("_isa")
ISAS = _isa.supported_isas()
use_isa = _isa.use_isa


@pytest.fixture(params=ISAS)
def isa(request):
    with use_isa(request.param):
        yield request.param
