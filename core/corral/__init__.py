"""corral: a pre-fork WSGI HTTP/1.1 server whose worker types are plugins."""

import pluggy

__version__ = "0.1.0"

#: The plugin API this core offers. A plugin module may set
#: ``CORRAL_PLUGIN_API = N``; a plugin built for another major API is refused
#: at load time with both numbers named, rather than failing later with an
#: AttributeError in a worker.
PLUGIN_API = 2

#: Marker for hook implementations: ``@corral.hookimpl def corral_post_fork(...)``.
hookimpl = pluggy.HookimplMarker("corral")

__all__ = ["PLUGIN_API", "__version__", "hookimpl"]
