"""Hypothesis profiles for the fault tests.

- ``ci``, loaded when the CI environment variable is set: derandomized (every CI run checks the
  same examples), no example database, no deadline. Each fault test fixes its own number of
  examples (``@settings(max_examples=...)``), bounded so the fault tests together take about a
  minute on a 2-core machine.
- ``fault`` otherwise: random exploration with the same bounded numbers, no deadline.

Profiles are global to hypothesis: loading one here also sets the default of the test modules
collected after this directory (deadline off, and derandomized in CI, as issue 10 asks of CI).
Neither changes the default number of examples (100). The long random exploration is
tools/fault_campaign.py's, which runs the same checks with many more examples.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile("ci", derandomize=True, database=None, deadline=None, max_examples=100,
                          suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("fault", deadline=None, max_examples=100, suppress_health_check=_QUIET)
settings.load_profile("ci" if os.environ.get("CI") else "fault")
