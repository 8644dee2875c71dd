"""WSGI entry point: ``gunicorn -k gthread --threads 8 wsgi:application`` from this directory.

``wrap`` routes each request to its region's owner before Django sees it, configured from ``settings.AFFINITY``.
"""

import os

from django.core.wsgi import get_wsgi_application

from affinity_mw.contrib.django import wrap

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

application = wrap(get_wsgi_application())
