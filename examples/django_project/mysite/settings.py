"""Settings for the pyfcgi Django example: no database, no installed apps, production-like
(DEBUG off). Set DJANGO_SECRET_KEY in the environment for anything but a local demo."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "dev-only-insecure-key-for-the-pyfcgi-example-0123456789"
)
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = []
DATABASES = {}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    # /form uses the CSRF token the proper way (cookie + hidden field); /upload is exempt.
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"

USE_TZ = True
USE_I18N = False
DEFAULT_CHARSET = "utf-8"

# Static files are served by the web server (see configs/nginx-flask.conf), not Django.
STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "static"

# Uploads larger than this go to a temp file instead of memory (Django's default, spelled out).
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# Errors to stderr, which pyfcgi writes to its log.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING"}},
}
