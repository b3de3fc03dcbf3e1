"""A small service that uses every public API of ``controlplane.client``, for mypy."""

from __future__ import annotations
