"""zspa-serve: vLLM's OpenAI-compatible server with ZSPAPrune knobs in the request body.

The HTTP layer is a vLLM endpoint plugin (entry point ``vllm.endpoint_plugins``:
``zspa_server``) that adds one ASGI middleware to vLLM's own app; ``zspa-serve`` is
``vllm serve`` with that plugin and the model plugin switched on.
"""
