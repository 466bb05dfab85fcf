"""The WSGI entry point pyfcgi loads.

    pyfcgi serve mysite.wsgi:application --chdir examples/django_project --venv .venv \
        --bind unix:/run/pyfcgi.sock
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

application = get_wsgi_application()
