"""WSGI entry point: ``gunicorn -k gthread --threads 8 wsgi:application`` from this directory."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

application = get_wsgi_application()
