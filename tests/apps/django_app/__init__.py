"""The Django probe app: the same probe routes and JSON as ``asgi_app``/``wsgi_app``, served by Django under
uvicorn (``asgi:application``) and gunicorn (``wsgi:application``) with affinity-mw's Django middleware."""
