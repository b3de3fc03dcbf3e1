"""Operations: probes and Prometheus metrics, outages, the proxy address, security headers.

The bottom layer of the control plane's apps: every app may import it, and it
imports none of them. What it needs from the product (the reconciler's readiness,
the fleet's metrics) is named in the settings, ``READINESS_CHECKS`` and
``METRICS_COLLECTORS``, the way ``MIDDLEWARE`` names middleware.
"""
