"""corral.testing: a kit for testing corral worker plugins against a real server.

- :class:`CorralProcess` runs ``python -m corral`` on an ephemeral port.
- The pytest plugin (entry point ``pytest11``, module ``corral.testing.plugin``)
  gives the ``corral_server`` fixture.
- ``corral.testing.conformance`` is the shared worker conformance suite.
- ``corral.testing.apps:app`` is the test application the suite uses.
"""

from corral.testing.process import CorralProcess, parse_responses, read_until_close

__all__ = ["CorralProcess", "parse_responses", "read_until_close"]
