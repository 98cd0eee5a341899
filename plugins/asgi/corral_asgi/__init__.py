"""corral's ASGI worker class (``--worker-class asgi``); see corral_asgi.worker."""
