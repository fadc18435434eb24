"""What runs in vLLM's worker processes: the model mixin that encodes, selects and hands
the kept rows to the prefill (``model``), pruned M-RoPE positions (``mrope``) and the hooks
into vLLM's model runners that apply them (``runner_hooks``), the encoder-output cache
(``encoder_cache``), phase timings (``phase_timings``) and the selection log the tests
read (``selection_log``)."""
