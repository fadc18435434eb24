import os

from hypothesis import HealthCheck, settings

# Derandomized: the same examples on every run, so CI can never flake on a lucky draw.
# HYPOTHESIS_PROFILE=explore runs a longer randomized search while developing.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("explore", max_examples=3000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
