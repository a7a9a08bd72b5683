"""Shared settings: hypothesis profiles (CI is fixed and derandomized)."""

from __future__ import annotations

import math
import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Headers written from lane entries kept between checkpoints (see trioflow._header_lanes) are
# checked, each one, against a walk over every lane; and entries are kept from two lanes on
# rather than from WIDE's 32, so that every fan-out in the suite is written that way: a change
# to a lane that its kept entry missed fails the test that made it.
from trioflow import _header_lanes  # noqa: E402

_header_lanes.CHECK_KEPT = True
_header_lanes.WIDE = 2
_header_lanes.BUSY = math.inf  # (nor written out anew when most lanes changed)
