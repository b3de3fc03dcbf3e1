"""Overrides join the policies app: the model moves, the table ``live_override`` does not.

State only: the table was created by live 0001 (a fresh database) or exists
already (an upgrade), with the same columns, foreign keys and index.
"""

from __future__ import annotations

import re

import django.core.validators
import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("policies", "0002_reason_max_length"),
        ("live", "0002_override_moves_to_policies"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="Override",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True,
                                primary_key=True,
                                serialize=False,
                                verbose_name="ID",
                            ),
                        ),
                        ("kind", models.CharField(max_length=20)),
                        (
                            "name",
                            models.CharField(
                                max_length=100,
                                validators=[
                                    django.core.validators.RegexValidator(
                                        re.compile("^[A-Za-z0-9][A-Za-z0-9_.\\-]{0,99}\\Z"),
                                        "Use letters, digits, dots, dashes and underscores, "
                                        "starting with a letter.",
                                    )
                                ],
                            ),
                        ),
                        (
                            "state",
                            models.CharField(
                                blank=True,
                                choices=[
                                    ("forced_open", "forced open"),
                                    ("forced_closed", "forced closed"),
                                    ("disabled", "disabled"),
                                    ("block_all", "block all"),
                                    ("bypass", "bypass"),
                                ],
                                max_length=20,
                            ),
                        ),
                        ("reason", models.TextField(blank=True)),
                        ("actor_name", models.CharField(max_length=150)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("expires_at", models.DateTimeField(blank=True, null=True)),
                        ("revision", models.BigIntegerField()),
                        (
                            "actor_user",
                            models.ForeignKey(
                                blank=True,
                                null=True,
                                on_delete=django.db.models.deletion.SET_NULL,
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "environment",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="overrides",
                                to="policies.environment",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "live_override",
                        "ordering": ["-revision"],
                        "indexes": [
                            models.Index(
                                fields=["environment", "kind", "name", "-revision"],
                                name="live_overri_environ_1806fa_idx",
                            )
                        ],
                    },
                ),
            ],
            database_operations=[],
        ),
    ]
