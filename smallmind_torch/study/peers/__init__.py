"""The peer engines (`smallmind peers`, the study's peers and its engines part): one protocol.
Every engine, HF's `generate` included, is an adapter (engines.py with the registry, on
base.py's interface; hf_engines.py, llama_cpp_engine.py, torchao_engine.py) asked for timed
greedy generations; bench.py runs each in its own process (worker.py), checked against
reference's tokens before it is timed; onnx_export.py exports our decode step for ONNX Runtime,
gguf_export.py writes our weights as a GGUF file for llama.cpp."""
