from __future__ import annotations

from django.apps import AppConfig


class LiveConfig(AppConfig):
    name = "controlplane.live"
    label = "live"
    verbose_name = "Live state and overrides"

    def ready(self) -> None:
        # push answers the policies app's row_changed signal: connect it in every
        # process (web, workers, shell), whatever else that process imported.
        from controlplane.live import push  # noqa: F401
