"""zspa-selfcheck: the check a user runs on their own device and vLLM before serving pruned models (zspa_selfcheck/cli.py)."""
