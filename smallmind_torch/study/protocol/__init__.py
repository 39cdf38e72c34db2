"""How one figure is measured (docs/study.md, "the protocol"): the settings and fixed inputs,
the check against reference, timing, profiling and the machine's limits."""
