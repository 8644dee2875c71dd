"""The Django probe app's ASGI entry point (settings forced: the tests never run another Django project here)."""

import os

from django.core.asgi import get_asgi_application

from affinity_mw.contrib.django import wrap

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.apps.django_app.settings"

application = wrap(get_asgi_application())
