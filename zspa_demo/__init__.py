"""Pruning you can look at: the built-in demo model (``zspa-serve --demo``), the synthetic
scenes it is trained and evaluated on, and ``zspa-show``, which draws what a request keeps."""
