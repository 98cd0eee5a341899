"""corral's shared worker conformance suite, run against asyncio-threads.

A worker plugin is done when it passes this suite. The fixtures come from
corral's pytest plugin (installed with corral); conftest.py names the class.
"""

from corral.testing.conformance import *  # noqa: F403
