"""corral.testing: a kit for testing corral worker plugins against a real server.

- :class:`CorralProcess` runs ``python -m corral`` on an ephemeral port and
  waits for it through its log; :func:`wait_for_file`,
  :func:`read_until_close` and :func:`parse_responses` help talk to it;
  :func:`run_corral` runs a command that ends by itself (``corral plugins``,
  ``--help``, a start-up that must fail).
- The pytest plugin (entry point ``pytest11`` named ``corral``, registered by
  the ``corral-testing`` distribution, ``corral[testing]``; module
  :mod:`corral.testing.plugin`) gives the fixtures ``corral_worker_class``,
  ``corral_server_args``, ``corral_server`` and ``corral_shared_server``.
- :mod:`corral.testing.conformance` is the shared worker conformance suite.
- ``corral.testing.apps:app`` is the test application the suite uses.

docs/writing-a-worker.md shows how a plugin's own tests use them.
"""

from corral.testing.process import (
    CorralProcess,
    parse_responses,
    read_until_close,
    run_corral,
    wait_for_file,
)

__all__ = ["CorralProcess", "parse_responses", "read_until_close", "run_corral", "wait_for_file"]
