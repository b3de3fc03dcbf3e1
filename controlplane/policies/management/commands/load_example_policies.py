from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from controlplane.policies.examples import load_examples


class Command(BaseCommand):
    help = "Create the example environments and policies that do not exist yet."

    def handle(self, *args: Any, **options: Any) -> None:
        created = load_examples()
        self.stdout.write(
            f"Created {len(created)} example policies." if created else "Examples already loaded."
        )
