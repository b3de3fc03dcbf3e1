"""An app to add to ``INSTALLED_APPS`` so ``manage.py check`` runs the client's checks.

``INSTALLED_APPS = [..., "controlplane.client.django_app"]``: it registers the
system check of :mod:`controlplane.client.django` (unmanaged limiters, an
environment never published) without waiting for the middleware to load.
"""

from __future__ import annotations

from django.apps import AppConfig


class ControlPlaneClientConfig(AppConfig):
    name = "controlplane.client.django_app"
    label = "controlplane_client"
    verbose_name = "Control-plane client"

    def ready(self) -> None:
        from controlplane.client import django  # noqa: F401  (registers the system check)
