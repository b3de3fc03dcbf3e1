"""gunicorn settings of tests/client/test_servers.py: the documented hooks, nothing else."""

from __future__ import annotations

from controlplane.client.gunicorn import post_fork, post_worker_init, worker_exit

__all__ = ["post_fork", "post_worker_init", "worker_exit"]
