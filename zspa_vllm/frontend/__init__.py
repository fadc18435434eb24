"""What runs in vLLM's API-server process (the multimodal processor): each request's
knobs and queries become a plan and a shorter placeholder run (``processor``, and
``one_run`` for families whose image is one run of embed positions); the kept/total
counts the HTTP layer reports per request (``request_counts``)."""
