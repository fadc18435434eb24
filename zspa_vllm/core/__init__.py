"""The pure core, imported by every process and importing no vLLM: the selection
(``selection``), the knobs (``params``), the per-request plan (``prune_plan``), the
processor-to-worker field contract (``fields``), the query rule (``query``), patch
geometry for drawing (``patch_geometry``) and the workers' counter files (``stats_files``)."""
