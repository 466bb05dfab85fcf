"""A Django hello world for scripts/bench/run, as one module: settings, URLconf and view.

    GET /  ->  "Hello, World!"   (WSGI callable: bench/django_app.py:application)

No database and no installed apps, but the middleware a production project keeps without them
(security, common, CSRF, clickjacking), with DEBUG off, so a request walks the usual path.
"""

import os
import sys

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path

sys.modules.setdefault("django_app", sys.modules[__name__])  # the URLconf, when loaded by path

settings.configure(
    DEBUG=False,
    SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "bench-only-insecure-key-0123456789abcdef"),
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF="django_app",
    MIDDLEWARE=[
        "django.middleware.security.SecurityMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
    ],
    USE_TZ=True,
    USE_I18N=False,
)


def hello(request):
    return HttpResponse(b"Hello, World!", content_type="text/plain")


urlpatterns = [path("", hello)]

application = get_wsgi_application()
