"""corral's operations plugins: the control socket, metrics and health, memory recycling.

Built into corral's wheel, and written as any third party would write a
plugin: each module is its own entry point in the ``corral`` group
(``control``, ``metrics``, ``memory``), uses only :mod:`corral.api` and the
hooks of :mod:`corral.hookspecs`, and can be turned off with
``--disable-plugin NAME``. What they report comes from the arbiter's
records and the pools' live counters (:class:`corral.api.StatsTable`).
"""
