"""What the fault checks have exercised: counts the campaign (tools/fault_campaign.py) reports."""

from __future__ import annotations

from collections import Counter

# "calls" (uAPI calls), "hypercalls", "streams", "files", "runs" (scenario runs), ...
TALLY: Counter[str] = Counter()
