"""``mypy --strict`` on a user's project that uses every public API of the client.

``typing_project/`` is that project (its own ``pyproject.toml``, the library found
as a dependency whose errors are not the user's). The test also adds a module of
mistakes, each marked ``# E: <part of mypy's message>``, and checks that mypy
reports exactly those: if a decorator or ``config.get`` degraded to ``Any``, the
mistakes would go unreported and the test would fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
PROJECT = Path(__file__).resolve().parent / "typing_project"

MISTAKES = """\
from __future__ import annotations

from controlplane.client import CircuitOpenError, Client, cached, rate_limited
from shop.api import login
from shop.catalogue import acatalogue, catalogue, prices
from shop.payments import payments_breaker, refund


async def mistakes(client: Client, error: CircuitOpenError) -> None:
    breaker = payments_breaker(client)

    @breaker
    def charge(order_id: int) -> str:
        return str(order_id)

    @client.rate_limited("search", limit=5)
    def search(query: str) -> list[str]:
        return [query]

    charge("1")  # E: Argument 1 to "charge" has incompatible type "str"; expected "int"
    breaker.call(charge, "1")  # E: Argument 2 to "call" of "CircuitBreaker"
    search(3)  # E: Argument 1 to "search" has incompatible type "int"; expected "str"
    refund("1")  # E: Argument 1 to "refund" has incompatible type "str"
    login(1)  # E: Argument 1 to "login" has incompatible type "int"
    catalogue("shoes", pages=2)  # E: Unexpected keyword argument "pages"
    catalogue.invalidate(3)  # E: Argument 1 to "invalidate" of "CachedFunction"
    await acatalogue.ainvalidate(page=1)  # E: Unexpected keyword argument "page"
    prices(client)(1)  # E: Argument 1 to "__call__" of "CachedFunction" has incompatible type
    count: int = catalogue("shoes")  # E: Incompatible types in assignment
    words: list[str] = await acatalogue(1)  # E: of "CachedFunction" has incompatible type "int"
    client.breaker("p", failur_rate_threshold=5)  # E: "failur_rate_threshold" for "breaker"
    client.limiter("api", limt=100)  # E: Unexpected keyword argument "limt"
    client.limiter("api", algorithm="leaky_bucket")  # E: Argument "algorithm" to "limiter"
    client.cached("prices", tll=30)  # E: Unexpected keyword argument "tll"
    client.cache("prices", serializer="xml")  # E: Argument "serializer" to "cache"
    rate_limited("login", limit="10")  # E: Argument "limit" to "rate_limited"
    cached("prices", stale_tll=3)  # E: Unexpected keyword argument "stale_tll"
    items: str = client.config.get("checkout.max_items", 10)  # E: (expression has type "int"
    flag: bool = client.config.get("checkout.flag")  # E: Incompatible types in assignment
    wait: float = error.retry_after  # E: Incompatible types in assignment
    Client(environment=1)  # E: Argument "environment" to "Client" has incompatible type
    print(count, words, items, flag, wait)
"""

LINE = re.compile(r"^shop/(?P<module>[a-z_]+)\.py:(?P<line>\d+): error: (?P<message>.*)$")


@pytest.mark.timeout(400)
def test_a_users_project_passes_mypy_strict_and_its_mistakes_are_reported(
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__", ".*cache"))
    (project / "shop" / "mistakes.py").write_text(MISTAKES)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", f"--cache-dir={tmp_path / 'mypy-cache'}", "shop"],
        cwd=project,  # the project's own pyproject.toml: strict
        env={**os.environ, "MYPYPATH": str(ROOT)},  # controlplane from this checkout
        capture_output=True,
        text=True,
        timeout=360,
    )
    output = result.stdout + result.stderr
    reported: dict[str, list[tuple[int, str]]] = {}
    for line in result.stdout.splitlines():
        match = LINE.match(line)
        if match is not None:
            entry = (int(match["line"]), match["message"])
            reported.setdefault(match["module"], []).append(entry)
    assert set(reported) == {"mistakes"}, output  # the project itself passes --strict

    expected = {
        number: text.split("  # E: ", 1)[1]
        for number, text in enumerate(MISTAKES.splitlines(), start=1)
        if "  # E: " in text
    }
    found = dict(reported["mistakes"])
    assert sorted(found) == sorted(expected), output
    for number, part in expected.items():
        assert part in found[number], (number, part, found[number])
