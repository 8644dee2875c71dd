"""Settings of the Django probe app: no database, ``wsgi.py``/``asgi.py`` wrapped, affinity-mw first in MIDDLEWARE.

``settings.AFFINITY`` sets a key source; the cluster's ``AFFINITY_*`` variables override it (the environment wins),
which is part of what the tests check. ``DJANGO_PROBE_SYNC_ONLY=1`` adds a sync-only middleware below
affinity-mw's, so Django runs the middleware chain synchronously even under ASGI.
"""

from __future__ import annotations

import os

SECRET_KEY = "django-probe-secret-key-not-for-production"
DEBUG = False
ALLOWED_HOSTS = ["*"]
DATABASES: dict[str, object] = {}
USE_TZ = True
ROOT_URLCONF = "tests.apps.django_app.urls"
# What the system checks read to see that the application is wrapped (affinity_mw.E003).
WSGI_APPLICATION = "tests.apps.django_app.wsgi.application"
ASGI_APPLICATION = "tests.apps.django_app.asgi.application"
INSTALLED_APPS = ["django.contrib.sessions", "affinity_mw.contrib.django.AffinityConfig"]
MIDDLEWARE = [
    "affinity_mw.contrib.django.AffinityMiddleware",
    # A session-cookie key source must route without loading the session: with no database configured, any
    # session load on the forwarding node would be a 500.
    "django.contrib.sessions.middleware.SessionMiddleware",
    "tests.apps.django_app.urls.CountServed",
]
if os.environ.get("DJANGO_PROBE_SYNC_ONLY") == "1":
    MIDDLEWARE.append("tests.apps.django_app.urls.SyncOnly")

AFFINITY = {"key": "header:X-Region", "no_key": "local"}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
