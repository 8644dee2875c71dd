"""A minimal Django project whose report view is marked unrouted, for the real-cluster test (settings, views,
URLs and the WSGI entry point in one module)."""

from __future__ import annotations

import os

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views import View

from affinity_mw.routes import unrouted

if not settings.configured:
    settings.configure(
        SECRET_KEY="django-unrouted-test-key-not-for-production",
        DEBUG=False,
        ALLOWED_HOSTS=["*"],
        DATABASES={},
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
    )
    django.setup()

NODE = os.environ.get("AFFINITY_SELF", "")


@unrouted
def report(request: HttpRequest, tenant: str) -> JsonResponse:
    return JsonResponse({"node": NODE})


def orders(request: HttpRequest, tenant: str) -> JsonResponse:
    return JsonResponse({"node": NODE})


@unrouted
class Export(View):
    def get(self, request: HttpRequest, tenant: str, rest: str) -> JsonResponse:
        return JsonResponse({"node": NODE})


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [
    path("reports/<str:tenant>", report),
    path("orders/<str:tenant>", orders),
    path("exports/", include([path("<str:tenant>/<path:rest>", Export.as_view())])),
    path("healthz", healthz),
]

from django.core.wsgi import get_wsgi_application  # noqa: E402  (after settings)

from affinity_mw.contrib.django import wrap  # noqa: E402

application = wrap(get_wsgi_application())
