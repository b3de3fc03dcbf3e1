from __future__ import annotations

from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "controlplane.webhooks"
    label = "webhooks"
    verbose_name = "Webhooks"

    def ready(self) -> None:
        # The audit log imports nothing of the apps that record in it: they tell it
        # through a signal, and every audited change may become an event here.
        from controlplane.audit.record import recorded
        from controlplane.webhooks.events import emit_for_entry

        recorded.connect(emit_for_entry, dispatch_uid="controlplane.webhooks.emit_for_entry")
