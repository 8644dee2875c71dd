"""``python manage.py check`` validates settings.AFFINITY under the current AFFINITY_* environment, and that
``wsgi.py`` and ``asgi.py`` wrap the application."""

import os
import sys

from django.core.management import execute_from_command_line

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")
    execute_from_command_line(sys.argv)
