from __future__ import annotations

from django.apps import AppConfig


class LiveConfig(AppConfig):
    name = "controlplane.live"
    label = "live"
    verbose_name = "Live state and overrides"

    def ready(self) -> None:
        # push answers the policies app's row_changed signal: connect it in every
        # process (web, workers, shell), whatever else that process imported; and a
        # deactivated user's open pages close at once, on every replica.
        from controlplane.accounts.signals import user_deactivated
        from controlplane.live import push  # noqa: F401

        user_deactivated.connect(
            _close_sessions, weak=False, dispatch_uid="controlplane-close-deactivated"
        )


def _close_sessions(sender: object, *, user_id: int, **kwargs: object) -> None:
    from controlplane.live.consumers import close_sessions_of

    close_sessions_of(user_id)
