"""Framework conveniences: thin layers over :mod:`affinity_mw.wsgi` and :mod:`affinity_mw.asgi`."""
