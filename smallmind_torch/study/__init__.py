"""Study half: the measurements of the protocol in docs/study.md, the peers, traces, the report.

    seed.py        the seed study's figures (SmallMind, C#)
    results.py     result types (PhaseResult, PeerResult, MachineLimits, StudyResult, ...)
    timing.py      median_time, threads(n)
    machine.py     this machine's limits: memory bandwidth, torch.mm GFLOPS, environment
    profiling.py   profiler events -> allocations and the labelled time split
    harness.py     BenchSettings and one preset's figures (measure_preset), GEMM, roofline
    peers.py       Hugging Face transformers on the same weights
    run.py         run_study: every preset, the peers and the limits in one run
    traces.py      TensorBoard / Chrome traces per preset
    report.py      tables, REPORT.md, results.json, plots
"""
