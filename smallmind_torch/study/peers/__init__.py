"""The peer engines (`smallmind peers`, the study's peers and its engines part): one protocol.
Every engine, HF's `generate` included, is an adapter (engines.py, on base.py's interface)
asked for timed greedy generations; bench.py runs each in its own process (worker.py), checked
against reference's tokens before it is timed; onnx_export.py exports our decode step for ONNX
Runtime."""
