"""zspa-eval: accuracy of a served VLM under pruning knob sweeps (any OpenAI-compatible
endpoint; the knobs travel in the request body as zspa-serve takes them)."""
