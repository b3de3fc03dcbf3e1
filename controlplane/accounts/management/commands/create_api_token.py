"""Create an API token from the command line, for automation: its secret is printed once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from controlplane.accounts.actions import do_create_token
from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import ORDER, Role
from controlplane.protocol.schema import InvalidValue, PolicyError, parse_duration

# The audit log's and the tokens page's "created by": no user, the command line.
ACTOR = "manage.py create_api_token"
# do_create_token's fields, by the option that gives them.
OPTIONS = {
    "label": "--label",
    "role": "--role",
    "expires_at": "--expires",
    "environments": "--environment",
}
BAD_EXPIRY = (
    "Enter a date (2027-01-31), a date and time (2027-01-31T18:00:00+00:00) "
    "or a duration with its unit (30d, 12h, 1d12h)."
)


def parse_expiry(text: str, now: datetime) -> datetime:
    """When a token given ``--expires text`` at ``now`` expires.

    A date or a date and time in ISO 8601 (without an offset: in ``TIME_ZONE``;
    a date alone: its first instant), or a duration from ``now`` by the policies'
    parser. A bare number is refused: 30 seconds or 30 days, nobody could tell.
    """
    text = text.strip()
    try:
        moment = parse_datetime(text)
    except ValueError:  # well formed, but no such day or time
        raise InvalidValue(BAD_EXPIRY) from None
    if moment is not None:
        return moment if timezone.is_aware(moment) else timezone.make_aware(moment)
    try:
        float(text)
    except ValueError:
        pass  # not a bare number
    else:
        raise InvalidValue(BAD_EXPIRY)
    try:
        return now + timedelta(seconds=parse_duration(text))
    except InvalidValue:
        raise InvalidValue(BAD_EXPIRY) from None
    except OverflowError:
        raise InvalidValue("That is beyond any date.") from None


class Command(BaseCommand):
    help = (
        "Create an API token and print its secret, shown only this once, on the last line "
        "(alone with --quiet). The token has no creator: it keeps its role until it "
        "expires or is revoked on the API tokens page."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--label", required=True, help="What uses the token, e.g. deploy-bot (1 to 100)."
        )
        parser.add_argument(
            "--role",
            choices=[r.value for r in ORDER],
            default=Role.VIEWER.value,
            help="Default: viewer.",
        )
        parser.add_argument(
            "--expires",
            help="A date, a date and time (ISO 8601) or a duration such as 30d or 12h. "
            "Default: never.",
        )
        parser.add_argument(
            "--environment",
            action="append",
            default=[],
            metavar="NAME",
            help="An environment the token may act in; repeat for several. "
            "Default: every environment.",
        )
        parser.add_argument(
            "--quiet", action="store_true", help="Print the secret only, nothing else."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        expires_at = None
        if options["expires"] is not None:
            try:
                expires_at = parse_expiry(options["expires"], timezone.now())
            except InvalidValue as exc:
                raise CommandError(f"--expires: {exc}") from None
        try:
            token, secret = do_create_token(
                options["label"],
                options["role"],
                Actor.system(ACTOR),
                expires_at,
                options["environment"],
            )
        except PolicyError as exc:
            raise CommandError(
                "Nothing was created. "
                + "; ".join(f"{OPTIONS.get(f, f)}: {' '.join(m)}" for f, m in exc.errors.items())
            ) from None
        if not options["quiet"]:
            expiry = token.expires_at.isoformat() if token.expires_at else "never"
            scope = ", ".join(sorted(set(options["environment"])))
            where = f" in {scope}" if scope else ""
            self.stdout.write(
                f"Created API token {token.label!r} (role {token.role}{where}, "
                f"expires {expiry}). Its secret, shown only this once:"
            )
        self.stdout.write(secret)
