"""The background workers: the reconciler (Redis follows the database), the ingest
(client reports into the live state and the dashboards' pushes), the webhook
sender (the outbox's events to their receivers) and the alert evaluator (the
fleet's breaker states and the alert rules, ``controlplane.alerts``).

They start on purpose, from one of two places: the ASGI app's start-up
(``asgi.py`` calls ``runner.start_enabled_workers()`` once, as ``RECONCILER_ENABLED``,
``INGEST_ENABLED``, ``WEBHOOKS_ENABLED`` and ``ALERTS_ENABLED`` say), or
``manage.py run_workers``, which runs them in the foreground of a process of their
own until SIGTERM or SIGINT (``docs/deployment.md`` says which to choose when).
Both are safe to run in several processes at once: the reconciler's writes are
idempotent, the ingest's readers share the reports through a consumer group, the
webhook sender claims each delivery before it sends it, and the alert evaluator
stores each change by a conditional update whose winner alone emits its event.
"""
