"""Overrides are the policies app's now: only Django's state forgets live.Override.

The table ``live_override`` stays as it is, rows and all; policies 0003 takes it
over under the same name.
"""

from __future__ import annotations

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("live", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name="Override")],
            database_operations=[],
        ),
    ]
