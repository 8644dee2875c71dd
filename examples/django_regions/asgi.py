"""ASGI entry point: ``uvicorn asgi:application`` from this directory."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

application = get_asgi_application()
