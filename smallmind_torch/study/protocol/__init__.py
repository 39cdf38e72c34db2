"""How one figure is measured (docs/study.md, "the protocol"): the settings and fixed inputs,
the check against reference, timing, profiling (and trace_events: the events behind a
trace's offline views) and the machine's limits."""
