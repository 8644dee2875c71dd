"""The Django probe app's ASGI entry point (settings forced: the tests never run another Django project here)."""

import os

from django.core.asgi import get_asgi_application

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.apps.django_app.settings"

application = get_asgi_application()
