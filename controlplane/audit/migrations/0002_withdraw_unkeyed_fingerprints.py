"""Withdraw the unkeyed fingerprints of secret values from earlier audit entries.

Until this release a secret config value was shown as ``secret:`` and 8 hex digits
of an unkeyed SHA-256, which anyone who can read the audit log can reverse for a
short secret by trying candidates. Those entries keep that the value changed, not
the digest. New entries carry a keyed HMAC (``controlplane.audit.record.fingerprint``).
"""

from __future__ import annotations

import re
from typing import Any

from django.db import migrations

UNKEYED = re.compile(r"^secret:[0-9a-f]{8}\Z")
WITHDRAWN = "secret (fingerprint withdrawn)"


def withdraw(apps: Any, schema_editor: Any) -> None:
    AuditEntry = apps.get_model("audit", "AuditEntry")
    entries = AuditEntry.objects.filter(object_kind="config").only("id", "changes")
    for entry in entries.iterator(chunk_size=500):
        change = entry.changes.get("value") if isinstance(entry.changes, dict) else None
        if not isinstance(change, list):
            continue
        masked = [
            WITHDRAWN if isinstance(side, str) and UNKEYED.match(side) else side for side in change
        ]
        if masked != change:
            # The base manager: the product's own refuses every update of the log.
            AuditEntry._base_manager.filter(id=entry.id).update(
                changes={**entry.changes, "value": masked}
            )


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [migrations.RunPython(withdraw, migrations.RunPython.noop, elidable=True)]
