"""The settings of the WSGI tests' Django project (``DJANGO_SETTINGS_MODULE`` of the
gunicorn processes; the test process configures the same values in code)."""

from tests.wsgi_apps import DJANGO_SETTINGS

globals().update(DJANGO_SETTINGS)
