from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Create the demo administrator if missing and print its credentials (local use only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument("--password", default="admin")

    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        username, password = options["username"], options["password"]
        if not user_model.objects.filter(username=username).exists():
            user_model.objects.create_superuser(username=username, email="", password=password)
            self.stdout.write(f"Created the demo administrator: {username} / {password}")
        else:
            self.stdout.write(f"Demo administrator: {username} / {password} (if unchanged)")
