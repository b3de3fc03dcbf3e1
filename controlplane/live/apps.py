from __future__ import annotations

from django.apps import AppConfig


class LiveConfig(AppConfig):
    name = "controlplane.live"
    label = "live"
    verbose_name = "Live state and overrides"
