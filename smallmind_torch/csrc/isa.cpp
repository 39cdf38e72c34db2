// smallmind::isa / set_isa / supported_isas: which instruction-set path the kernels run (see
// simd.h for the design). The selection is process-wide and read once per op call.
#include <torch/library.h>

#include <string>
#include <vector>

#include "simd.h"

namespace smallmind {
namespace {

// SMALLMIND_ISA is read when the library loads, not at the first op call.
[[maybe_unused]] const bool isa_read_at_load = (current_isa(), true);

std::string isa_op() { return isa_name(current_isa()); }

void set_isa_op(const std::string& name) {
  const std::string problem = isa_problem(name);
  TORCH_CHECK_VALUE(problem.empty(), "smallmind::set_isa: ", problem);
  Isa isa = Isa::scalar;
  parse_isa(name, &isa);
  select_isa(isa);
}

std::vector<std::string> supported_isas_op() {
  std::vector<std::string> out;
  for (Isa i : supported_isas()) out.emplace_back(isa_name(i));
  return out;
}

}  // namespace
}  // namespace smallmind

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("isa() -> str", &smallmind::isa_op);
  m.def("set_isa(str name) -> ()", &smallmind::set_isa_op);
  m.def("supported_isas() -> str[]", &smallmind::supported_isas_op);
}
