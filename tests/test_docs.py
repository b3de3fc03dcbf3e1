"""The documentation holds: the Grafana dashboard queries only what /metrics really exports,
and the relative links of README.md and docs/*.md lead somewhere."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.test import Client as HttpClient
from prometheus_client.parser import text_string_to_metric_families

from controlplane.accounts.actors import Actor
from controlplane.client import CircuitOpenError, Client
from controlplane.embedded_redis import RedisServer
from controlplane.live.ingest import Ingestor
from controlplane.policies.actions import do_create_policy, do_update_policy
from controlplane.policies.models import Environment, Policy
from controlplane.policies.overrides import do_set_override
from controlplane.policies.reconcile import quick_check, reconcile_all
from controlplane.redis_connection import get_redis
from tests.client.conftest import client_factory, set_policy
from tests.conftest import wait_for

__all__ = ["client_factory", "set_policy"]

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
# Grafana's own variables, replaced by what Grafana would send; every other
# variable ($environment, $policy) by its "All" value.
GRAFANA_VARIABLES = {"__rate_interval": "1m", "__range": "1h", "__interval": "1m"}
ALL = ".*"
# Labels Prometheus adds to every series it scrapes: not in /metrics, always there.
TARGET_LABELS = {"job", "instance"}
RATE_FUNCTIONS = {"rate", "irate", "increase"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset"}
AGGREGATIONS = {"sum", "min", "max", "avg", "count", "group", "stddev", "stdvar", "topk", "bottomk"}
AGGREGATIONS |= {"quantile", "count_values"}
COUNTER_SUFFIXES = ("_total", "_bucket", "_count", "_sum")

TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<matchers>\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})
  | (?P<range>\[[^\]]*\])
  | (?P<number>\d+(?:\.\d+)?(?:e[+-]?\d+)?)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<other>[^\s])
    """,
    re.VERBOSE,
)
MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+),\s*)?(?P<label>\w+)\s*\)\s*$")


# -- Reading the dashboard ---------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside (collapsed) rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """``(where, PromQL, label)`` for every panel query and every query variable.

    A variable's ``label_values(selector, label)`` gives its selector as the
    PromQL and the label it lists.
    """
    found: list[tuple[str, str, str | None]] = []
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} ({target['refId']})", target["expr"], None))
    for annotation in prometheus_annotations(dashboard):
        found.append((f"annotation {annotation['name']!r}", annotation["expr"], None))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = LABEL_VALUES.match(text)
        assert match and match["selector"], f"variable {variable['name']}: {text!r}"
        found.append((f"variable ${variable['name']}", match["selector"], match["label"]))
    return found


def prometheus_annotations(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's annotation queries that read Prometheus (not Grafana's built-in one)."""
    annotations = dashboard.get("annotations", {}).get("list", [])
    return [a for a in annotations if a.get("datasource", {}).get("type") == "prometheus"]


def substitute(expr: str) -> str:
    """Replace Grafana variables as Grafana would, the dashboard's own by their "All" value."""

    def value(match: re.Match[str]) -> str:
        name = match["braced"] or match["plain"]
        return GRAFANA_VARIABLES.get(name, ALL)

    return re.sub(r"\$\{(?P<braced>\w+)(?::\w+)?\}|\$(?P<plain>\w+)", value, expr)


@dataclass
class Selector:
    metric: str
    matchers: list[tuple[str, str, str]]
    rated: bool  # the argument of rate(), irate() or increase()


@dataclass
class Expression:
    selectors: list[Selector] = field(default_factory=list)
    grouping_labels: set[str] = field(default_factory=set)


def parse(expr: str) -> Expression:
    """The metric selectors of a PromQL expression, and the labels it groups or joins on.

    Enough PromQL for dashboards: names, ``{matchers}``, ``[ranges]``, functions,
    aggregations with ``by``/``without``, and ``on``/``ignoring``/``group_left`` joins.
    """
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr) if m.lastgroup != "string"]
    parsed = Expression()
    rate_pending = False
    index = 0
    while index < len(tokens):
        kind, text = tokens[index]
        following = tokens[index + 1] if index + 1 < len(tokens) else (None, "")
        index += 1
        if kind != "name" or text in KEYWORDS:
            continue
        if text in GROUPING:
            if following[0] == "open":
                index += 1
                while index < len(tokens) and tokens[index][0] != "close":
                    if tokens[index][0] == "name":
                        parsed.grouping_labels.add(tokens[index][1])
                    index += 1
            continue
        if following[0] == "open" or text in AGGREGATIONS:  # `sum by (x) (...)` too
            rate_pending = rate_pending or text in RATE_FUNCTIONS
            continue
        matchers: list[tuple[str, str, str]] = []
        if following[0] == "matchers":
            body = following[1][1:-1]
            matchers = [(m[1], m[2], m[3]) for m in MATCHER.finditer(body)]
            assert "".join(m.group() for m in MATCHER.finditer(body)).strip() == body.strip(), (
                f"cannot read the matchers {following[1]!r} in {expr!r}"
            )
            index += 1
        parsed.selectors.append(Selector(text, matchers, rate_pending))
        rate_pending = False
    return parsed


# -- Reading /metrics ----------------------------------------------------------------------


@dataclass
class Exposition:
    """Every sample of one or more scrapes, and the type of every name they declare."""

    samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            names = [family.name]
            if family.type == "counter":
                names = [family.name + "_total"]
            elif family.type == "histogram":
                names = [family.name + suffix for suffix in ("_bucket", "_count", "_sum")]
            for name in names:
                self.types[name] = family.type
                self.samples.setdefault(name, [])
            for sample in family.samples:
                self.types.setdefault(sample.name, family.type)
                self.samples.setdefault(sample.name, []).append(dict(sample.labels))

    def select(self, selector: Selector) -> list[dict[str, str]]:
        return [
            labels
            for labels in self.samples.get(selector.metric, [])
            if all(
                _matches(labels.get(name, ""), op, value) for name, op, value in selector.matchers
            )
        ]


def _matches(actual: str, op: str, value: str) -> bool:
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    matched = re.fullmatch(value, actual) is not None  # PromQL regexes are anchored
    return matched if op == "=~" else not matched


def problems(dashboard: dict[str, Any], exposition: Exposition) -> list[str]:
    """Everything in the dashboard's queries that the exposition does not bear out."""
    found: list[str] = []
    for where, expr, listed_label in queries(dashboard):
        parsed = parse(substitute(expr))
        if not parsed.selectors:
            found.append(f"{where}: no metric in {expr!r}")
        selected_labels: set[str] = set(TARGET_LABELS)
        for selector in parsed.selectors:
            name = selector.metric
            if name not in exposition.types:
                found.append(f"{where}: {name} is not exported by /metrics")
                continue
            selected = exposition.select(selector)
            if not selected:
                found.append(f"{where}: {name}{{{selector.matchers}}} selects no series")
            for labels in selected:
                selected_labels.update(labels)
            for label, _, _ in selector.matchers:
                if not any(label in labels for labels in exposition.samples[name]):
                    found.append(f"{where}: {name} has no label {label!r}")
            is_counter = exposition.types[name] in {"counter", "histogram"} and name.endswith(
                COUNTER_SUFFIXES
            )
            if selector.rated and not is_counter:
                found.append(f"{where}: rate()/increase() over {name}, which is not a counter")
            if not selector.rated and is_counter and listed_label is None:
                found.append(f"{where}: {name} is a counter: plot its rate() or increase()")
        wanted = parsed.grouping_labels | ({listed_label} if listed_label else set())
        for label in sorted(wanted - selected_labels):
            found.append(f"{where}: no series it selects has the label {label!r}")
    return found


# -- The dashboard against the real /metrics ----------------------------------------------


def boom() -> None:
    time.sleep(0.005)  # slower than the policy's slow_call_duration
    raise ConnectionError("upstream down")


def fleet_traffic(service: Client) -> None:
    """A breaker that opens and rejects, a rate-limit rejection, a cache miss and a hit."""
    breaker = service.breaker("payments")
    for _ in range(3):
        with pytest.raises((ConnectionError, CircuitOpenError)):
            breaker.call(boom)
    assert breaker.state == "open"
    limiter = service.limiter("api")
    assert [limiter.hit("user:42").allowed for _ in range(2)] == [True, False]

    @service.cached("prices")
    def price(sku: str) -> str:
        return sku.lower()

    assert [price("ABC-1"), price("ABC-1")] == ["abc-1", "abc-1"]


def shows_the_fleet(text: str) -> bool:
    wanted = (
        'controlplane_fleet_breaker_instances{breaker="payments",environment="production",'
        'state="open"}',
        'counter="slow",environment="production",policy="breaker:payments"}',
        'counter="rejected",environment="production",policy="rate_limit:api"}',
        'controlplane_fleet_cache_hit_ratio{cache="prices",environment="production"} 0.5',
        'controlplane_reports_ingested_total{type="transition"}',
    )
    return all(line in text for line in wanted)


@pytest.mark.django_db(transaction=True)
def test_the_dashboard_queries_only_what_the_control_plane_exports(
    disposable_redis: RedisServer,
    production: Environment,
    set_policy: Callable[..., Policy],
    client_factory: Callable[..., Client],
    client: HttpClient,
) -> None:
    set_policy(
        "breaker",
        "payments",
        failure_rate_threshold=50,
        slow_call_duration=0.001,
        minimum_calls=2,
        window_size=2,
        open_for=60,
    )
    set_policy("rate_limit", "api", limit=1, period=60)
    set_policy("cache", "prices", ttl=60)
    exposition = Exposition()
    service = client_factory(report_interval=0.1).start()
    ingestor = Ingestor(block_ms=50)
    ingestor.start()
    try:
        fleet_traffic(service)
        # Redis loses a document: the reconciler's quick check misses it, a full pass repairs it.
        get_redis().hdel(production.keys().policies, "cache:prices")
        assert quick_check() == []
        assert reconcile_all()[0].missing == ["cache:prices"]

        def scrape() -> str | None:
            text = client.get("/metrics").content.decode()
            return text if shows_the_fleet(text) else None

        exposition.add(wait_for(scrape, interval=0.1))
    finally:
        ingestor.stop()
        service.close()
    # An override in force: the dashboard's override marks read its series.
    do_set_override(production, "rate_limit", "api", "bypass", Actor.system("tests"), "drill")
    # Redis goes away: a change saved now fails to publish, and so does reading the fleet,
    # which the next scrape counts (the error counter is written before the fleet is read).
    disposable_redis.stop()
    set_policy("cache", "prices", ttl=30)
    for _ in range(2):
        exposition.add(client.get("/metrics").content.decode())
    assert {"section": "policies", "result": "failed"} in exposition.samples[
        "controlplane_publishes_total"
    ]
    assert {"operation": "metrics"} in exposition.samples["controlplane_redis_errors_total"]

    found = problems(load_dashboard(), exposition)
    assert not found, "\n".join(found)


def test_a_panel_with_a_metric_that_does_not_exist_is_reported() -> None:
    exposition = Exposition()
    exposition.add(
        "# TYPE controlplane_publishes_total counter\n"
        'controlplane_publishes_total{section="policies",result="written"} 3\n'
        "# TYPE controlplane_fleet_instances gauge\n"
        'controlplane_fleet_instances{environment="production"} 2\n'
    )

    def dashboard(*exprs: str) -> dict[str, Any]:
        targets = [{"refId": chr(65 + i), "expr": expr} for i, expr in enumerate(exprs)]
        return {"panels": [{"title": "p", "targets": targets}], "templating": {"list": []}}

    good = dashboard(
        "sum by (result) (rate(controlplane_publishes_total[$__rate_interval]))",
        'max by (environment) (controlplane_fleet_instances{environment=~"$environment"})',
    )
    assert problems(good, exposition) == []
    assert problems(dashboard("rate(controlplane_publishes[5m])"), exposition) == [
        "panel 'p' (A): controlplane_publishes is not exported by /metrics"
    ]
    assert problems(dashboard('controlplane_fleet_instances{env="production"}'), exposition) == [
        "panel 'p' (A): controlplane_fleet_instances{[('env', '=', 'production')]} selects no "
        "series",
        "panel 'p' (A): controlplane_fleet_instances has no label 'env'",
    ]
    assert problems(dashboard("rate(controlplane_fleet_instances[5m])"), exposition) == [
        "panel 'p' (A): rate()/increase() over controlplane_fleet_instances, which is not a counter"
    ]
    assert problems(dashboard("sum by (policy) (controlplane_publishes_total)"), exposition) == [
        "panel 'p' (A): controlplane_publishes_total is a counter: plot its rate() or increase()",
        "panel 'p' (A): no series it selects has the label 'policy'",
    ]


def test_the_dashboard_is_importable() -> None:
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["environment"]["type"] == variables["policy"]["type"] == "query"
    panels = list(all_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


@pytest.mark.django_db(transaction=True)
def test_the_dashboard_marks_policy_changes_and_overrides_from_exported_series(
    production: Environment, client: HttpClient
) -> None:
    annotations = {a["name"]: a for a in prometheus_annotations(load_dashboard())}
    assert set(annotations) == {"Policy changes", "Overrides"}
    changes, overrides = annotations["Policy changes"], annotations["Overrides"]
    # The fields Grafana's Prometheus data source reads from an annotation query.
    for annotation in annotations.values():
        assert annotation["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert annotation["enable"] is True and annotation["useValueForTime"] is False
        assert annotation["step"] and annotation["tagKeys"]
        grouped = parse(substitute(annotation["expr"])).grouping_labels
        shown = set(re.findall(r"\{\{(\w+)\}\}", annotation["titleFormat"]))
        shown |= set(annotation["tagKeys"].split(","))
        assert shown <= grouped, annotation["name"]  # every label it shows survives the max
    assert changes["titleFormat"] == "{{kind}}:{{name}} changed"
    assert "changes(controlplane_policy_version" in changes["expr"]
    assert changes["expr"].endswith("> 0")
    assert "controlplane_override_active" in overrides["expr"]
    # After a save and an override, /metrics has every series the marks read.
    actor = Actor.system("tests")
    policy = do_create_policy(production, "breaker", "payments", {}, actor)
    do_update_policy(policy, {"failure_rate_threshold": 60}, actor, "fewer trips")
    do_set_override(production, "breaker", "payments", "forced_open", actor, "incident")
    exposition = Exposition()
    exposition.add(client.get("/metrics").content.decode())
    only_annotations = {"annotations": {"list": list(annotations.values())}, "panels": []}
    only_annotations["templating"] = {"list": []}
    assert [where for where, _, _ in queries(only_annotations)] == [
        "annotation 'Policy changes'",
        "annotation 'Overrides'",
    ]
    found = problems(only_annotations, exposition)
    assert not found, "\n".join(found)
    assert exposition.types["controlplane_policy_version"] == "gauge"
    assert exposition.types["controlplane_override_active"] == "gauge"


# -- Links ----------------------------------------------------------------------------------


def heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a document's headings."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading[1].strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_relative_links_in_the_docs_lead_to_a_file_and_heading() -> None:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for document in documents:
        for link in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", link):  # https:, mailto:
                continue
            path, _, anchor = link.partition("#")
            target = (document.parent / path).resolve() if path else document
            if not target.exists():
                broken.append(f"{document.name}: {link} (no such file)")
            elif (
                anchor
                and target.suffix == ".md"
                and anchor not in heading_anchors(target.read_text())
            ):
                broken.append(f"{document.name}: {link} (no such heading)")
    assert broken == []
