"""``Client.breaker``, ``limiter``, ``cache`` and their decorators take typed keyword
arguments: an editor completes them, and mypy catches a misspelt one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

SNIPPET = """
from datetime import timedelta

from controlplane.client import Client


def configure(client: Client) -> None:
    client.breaker("payments", failure_rate=50, open_for=timedelta(seconds=30), record=[OSError])
    client.limiter("api", algorithm="gcra", limit=100, period="1m", key="ip")
    client.cache("prices", ttl=30, stale=10, serializer="json")
    client.rate_limited("search", limit=5)
    client.cached("quotes", ttl=5)
    client.breaker("payments", failur_rate=50)
    client.limiter("api", limt=100)
    client.cached("prices", tll=30)
    client.limiter("api", algorithm="leaky_bucket")
"""


def test_mypy_catches_a_misspelt_or_wrong_keyword_argument(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(SNIPPET)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file=",  # not the project's: no Django plugin, no settings
            "--follow-imports=silent",
            f"--cache-dir={tmp_path / 'mypy-cache'}",
            str(snippet),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [
        line.split(": error: ", 1)[1] for line in result.stdout.splitlines() if ": error: " in line
    ]
    assert errors == [
        'Unexpected keyword argument "failur_rate" for "breaker" of "Client"; '
        'did you mean "failure_rate"?  [call-arg]',
        'Unexpected keyword argument "limt" for "limiter" of "Client"; '
        'did you mean "limit"?  [call-arg]',
        'Unexpected keyword argument "tll" for "cached" of "Client"  [call-arg]',
        'Argument "algorithm" to "limiter" of "Client" has incompatible type '
        "\"Literal['leaky_bucket']\"; expected "
        "\"Literal['token_bucket', 'gcra', 'fixed_window', 'sliding_window']\"  [arg-type]",
    ], result.stdout + result.stderr
