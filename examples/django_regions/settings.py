"""Single-file settings of the region-cache example: no database, ``wsgi.py``/``asgi.py`` wrapped by affinity-mw.

``settings.AFFINITY`` holds what the code decides: route by the ``X-Region`` header, serve requests without a
valid region where they land. The deploy's ``AFFINITY_*`` variables (peers, this node, the cluster secret)
complete it, and any variable that is set wins over the same option here. ``run_cluster.py`` sets them for three
local nodes.
"""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-secret-change-me")
DEBUG = False
ALLOWED_HOSTS = ["*"]
DATABASES: dict[str, object] = {}
USE_TZ = True
ROOT_URLCONF = "regions"
# The applications the servers run (runserver uses WSGI_APPLICATION); `manage.py check` makes sure both are wrapped.
WSGI_APPLICATION = "wsgi.application"
ASGI_APPLICATION = "asgi.application"

# The app config only registers affinity-mw's system checks, so `python manage.py check` validates AFFINITY.
INSTALLED_APPS = ["affinity_mw.contrib.django.AffinityConfig"]

MIDDLEWARE = [
    # Sets request.affinity (the decision the wrapped application made); first, so every middleware can read it.
    "affinity_mw.contrib.django.AffinityMiddleware",
    "django.middleware.common.CommonMiddleware",
]

AFFINITY = {
    "key": "region:X-Region",  # lower-cased, only [a-z0-9._-], at most 64 characters
    # Requests without a valid region are served where they land (health checks, /cache); /prices answers
    # 400 itself. "reject" would answer 400 for every keyless request, health checks included.
    "no_key": "local",
    "debug_headers": True,  # X-Affinity-Served-By / X-Affinity-Owner on every response
}
