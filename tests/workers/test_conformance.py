"""The shared worker conformance suite, for every installed worker class."""

from corral.testing.conformance import *  # noqa: F403
