"""docs/protocol/vectors/scripts_breaker.json and breaker_machine.json against our code.

The script cases run the real breaker scripts (``scripts.load``) on the suite's
Redis at the Redis time each call gives (``lua_time.at_time``). The machine
cases drive a real ``CircuitBreaker`` of a started client against the same
Redis, on a clock of the case's own: the breaker modules' ``time`` and the
breaker scripts' ``TIME`` both read it, so nothing sleeps.
"""

from __future__ import annotations

import contextvars
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis

from controlplane.client import CircuitOpenError, breaker_fleet, snapshot
from controlplane.client import breaker as breaker_module
from controlplane.client.breaker import CircuitBreaker
from controlplane.client.breaker_fleet import BreakerHub
from controlplane.policies.publish import write_document
from controlplane.protocol import scripts
from controlplane.protocol.breaker_state import BreakerState
from controlplane.protocol.documents import OverrideDocument, PolicyDocument
from controlplane.protocol.keys import KeyLayout
from controlplane.protocol.schema import BREAKER, validate_spec
from tests.client.conftest import make_client
from tests.conftest import wait_for
from tests.protocol.lua_time import at_time

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "vectors"
SCRIPT_CASES: list[dict[str, Any]] = json.loads(
    (VECTORS / "scripts_breaker.json").read_text(encoding="utf-8")
)["cases"]
MACHINE_CASES: list[dict[str, Any]] = json.loads(
    (VECTORS / "breaker_machine.json").read_text(encoding="utf-8")
)["cases"]


@pytest.mark.parametrize("cases", [SCRIPT_CASES, MACHINE_CASES], ids=["scripts", "machine"])
def test_the_files_name_every_case_once_with_its_rule(cases: list[dict[str, Any]]) -> None:
    names = [case["name"] for case in cases]
    assert len(names) == len(set(names))
    assert all(case["rule"] for case in cases)


def substitute(value: str, tag: str) -> str:
    return value.replace("{P:E}", "{" + tag + "}")


# The script cases


def matches(expected: Any, actual: Any) -> bool:
    """Whether a reply (bytes, ints, None, lists) is what the vector's notation says."""
    if isinstance(expected, dict):
        if "json" in expected:
            return isinstance(actual, bytes) and json.loads(actual) == expected["json"]
        if "raw" in expected:
            return actual == expected["raw"].encode()
        if "pttl_max" in expected:
            return isinstance(actual, int) and 0 < actual <= expected["pttl_max"]
        raise AssertionError(f"unknown notation {expected!r}")
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, str):
        return actual == expected.encode()
    if isinstance(expected, bool):
        raise AssertionError("no booleans in replies")
    return bool(actual == expected)


@pytest.fixture
def raw_client(settings: Any) -> Iterator[redis.Redis]:
    """The suite's Redis with bytes replies (the script cases compare bytes)."""
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    client.close()


@pytest.mark.parametrize("case", SCRIPT_CASES, ids=[case["name"] for case in SCRIPT_CASES])
def test_script_vector(case: dict[str, Any], raw_client: redis.Redis, key_prefix: str) -> None:
    tag = f"{key_prefix}:production"
    breakers = substitute("{P:E}:breakers", tag)
    probes = substitute("{P:E}:breaker-probes:payments", tag)
    events = substitute("{P:E}:breaker-events", tag)
    before = case["before"]
    if before["state"] is not None:
        raw_client.hset(breakers, "payments", before["state"]["raw"])
    for name, value in before.get("other_states", {}).items():
        raw_client.hset(breakers, name, value)
    if before["probes"] is not None:
        raw_client.set(probes, before["probes"]["value"], px=before["probes"]["pttl_ms"])
    listener = raw_client.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(events)
    wait_for(lambda: listener.get_message(timeout=0.01) is None and listener.subscribed)
    try:
        for index, call in enumerate(case["calls"]):
            where = f"call {index} ({call['script']})"
            seconds, microseconds = (int(part) for part in call["time"])
            script = at_time(scripts.load(call["script"]), seconds, microseconds)
            keys = [substitute(key, tag) for key in call["keys"]]
            args = [substitute(arg, tag) for arg in call["args"]]
            expected = call["reply"]
            if isinstance(expected, dict) and "error" in expected:
                with pytest.raises(redis.ResponseError, match=expected["error"]):
                    scripts.run(raw_client, script, keys, args, raw=True)
            else:
                reply = scripts.run(raw_client, script, keys, args, raw=True)
                assert matches(expected, reply), f"{where}: reply {reply!r}"
            stored = raw_client.hget(breakers, "payments")
            after = call["after"]
            if after["state"] is None:
                assert stored is None, where
            else:
                assert matches(after["state"], stored), f"{where}: stored {stored!r}"
                assert raw_client.pttl(breakers) == -1, where
            counter = raw_client.get(probes)
            if after["probes"] is None:
                assert counter is None, where
            else:
                assert counter == after["probes"]["value"].encode(), where
                assert 0 < int(raw_client.pttl(probes)) <= after["probes"]["pttl_max"], where
            raw_client.publish(events, "end of call")
            published = []
            while (message := listener.get_message(timeout=2)) is not None:
                if message["data"] == b"end of call":
                    break
                published.append(message["data"])
            else:
                raise AssertionError(f"{where}: the end-of-call marker never arrived")
            assert matches(call["published"], published), f"{where}: published {published!r}"
            assert all(message == stored for message in published), where
    finally:
        listener.close()


# The machine cases


class CaseClock:
    """The case's clock, exact to the microsecond: the breaker modules' ``time`` module.

    ``time()``, ``monotonic()`` and ``perf_counter()`` all read the case's unix
    time (a monotonic clock may start anywhere); anything else is the real
    ``time`` module's.
    """

    def __init__(self) -> None:
        self.microseconds = 0

    def set(self, seconds: float) -> None:
        moment = round(seconds * 1_000_000)
        assert moment >= self.microseconds, "a case's time never goes back"
        self.microseconds = moment

    def advance(self, seconds: float) -> None:
        self.microseconds += round(seconds * 1_000_000)

    def time(self) -> float:
        return self.microseconds / 1_000_000

    monotonic = perf_counter = time

    def redis_time(self) -> tuple[int, int]:
        seconds, microseconds = divmod(self.microseconds, 1_000_000)
        return seconds, microseconds

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


class ScriptsAtCaseTime(Mapping[str, scripts.LuaScript]):
    """``breaker_fleet._SCRIPTS`` whose scripts see the case's time in ``TIME``."""

    def __init__(self, clock: CaseClock) -> None:
        self.clock = clock
        self.names = ("transition", "probe", "probe_done", "read")

    def __getitem__(self, name: str) -> scripts.LuaScript:
        return at_time(scripts.load(f"breaker_{name}"), *self.clock.redis_time())

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def exception_classes(case: dict[str, Any]) -> dict[str, type[Exception]]:
    """The case's exception types as Python classes: module and name from the dotted name."""
    classes: dict[str, type[Exception]] = {}
    for declared in case.get("exception_types", []):
        module, _, name = declared["name"].rpartition(".")
        bases = tuple(classes[base] for base in declared["bases"]) or (Exception,)
        classes[declared["name"]] = type(name, bases, {"__module__": module, "__qualname__": name})
    unlisted = type("Unlisted", (Exception,), {"__module__": "vectors.unlisted"})
    classes["failure"] = unlisted
    return classes


class MachineRun:
    """One machine case: the client, its breaker, the case's clock and what was reported."""

    def __init__(
        self, case: dict[str, Any], key_prefix: str, raw: redis.Redis, clock: CaseClock
    ) -> None:
        self.raw = raw
        self.keys = KeyLayout("production", key_prefix)
        self.clock = clock
        self.classes = exception_classes(case)
        self.revision = 1
        self.processed_epoch = 0
        self.lost_epochs: set[int] = set()
        self.reported: list[dict[str, Any]] = []
        self.seen_revisions: list[int] = [0]
        self.calls: dict[str, contextvars.Context] = {}
        self.breaker: CircuitBreaker | None = None
        spec = validate_spec(BREAKER, case["spec"])
        document = PolicyDocument(BREAKER, "payments", 1, 1, spec)
        write_document(self.keys, "policies", "breaker:payments", document.encode(), 1)
        self.client = make_client(service="vectors")
        self.hub = BreakerHub.of(self.client)
        handle = self.client._channel_handlers[self.keys.breaker_events]

        def on_event(data: bytes) -> None:
            handle(data)
            epoch = json.loads(data).get("epoch")
            if isinstance(epoch, int):
                self.processed_epoch = max(self.processed_epoch, epoch)

        self.client._channel_handlers[self.keys.breaker_events] = on_event
        report = self.client.reporter.transition

        def transition(kind: str, name: str, **data: Any) -> None:
            if data.get("instance") == self.client.instance_id:
                data["instance"] = "self"
            self.reported.append(data)
            report(kind, name, **data)

        self.client.reporter.transition = transition  # type: ignore[method-assign]

    def start(self) -> None:
        self.client.start()
        assert self.client.wait_synced(5)

    def close(self) -> None:
        self.client.close()

    def settle(self) -> None:
        """Wait until the writer thread is idle and every published state was heard."""

        def quiet() -> bool:
            if not self.hub.idle():
                return False
            stored = self.raw.hget(self.keys.breakers, "payments")
            if stored is None:
                return True
            try:
                epoch = BreakerState.decode(stored).epoch
            except ValueError:
                return True
            return self.processed_epoch >= epoch or epoch in self.lost_epochs

        wait_for(quiet, timeout=5, interval=0.002)

    def run_script(self, name: str, args: list[Any]) -> Any:
        script = at_time(scripts.load(name), *self.clock.redis_time())
        keys = [self.keys.breakers, self.keys.breaker_probes("payments")]
        return scripts.run(self.raw, script, keys, args, raw=True)

    def publish_override(self, state: str | None, expires_at: float | None, actor: str) -> None:
        """Set or lift the override as the control plane does: a new revision, published."""
        self.revision += 1
        document = OverrideDocument(
            BREAKER, "payments", self.revision, state, actor=actor, expires_at=expires_at
        )
        field = "breaker:payments"
        write_document(self.keys, "overrides", field, document.encode(), self.revision)
        wait_for(lambda: self.seen_revisions[-1] >= self.revision, timeout=5, interval=0.002)

    def step(self, step: dict[str, Any]) -> dict[str, Any]:
        """Run one step; return what it observed (to compare with the step's expectations)."""
        self.clock.set(step["at"])
        observed: dict[str, Any] = {}
        do = step["do"]
        if do == "start":
            self.breaker = self.client.breaker("payments")
            self.client.watch(
                BREAKER, "payments", lambda kind, name: self.seen_revisions.append(self.revision)
            )
        elif do in ("call", "begin", "end"):
            observed = self.call(step)
        elif do == "tick":
            pass
        elif do == "resync":
            self.client.resync()
        elif do == "override":
            self.publish_override(step["state"], step["expires_at"], "vectors")
        elif do == "override_lifted":
            self.publish_override(None, None, step["actor"])
        elif do == "shared_state_lost":
            self.raw.hdel(self.keys.breakers, "payments")
            self.raw.delete(self.keys.breaker_probes("payments"))
        else:
            self.fleet(step)
        self.settle()
        return observed

    def fleet(self, step: dict[str, Any]) -> None:
        """Another instance, or the control plane, runs a breaker script."""
        do = step["do"]
        lost = step.get("message") == "lost"
        channel = self.keys.breaker_events + (":nobody-listens" if lost else "")
        if do == "fleet_transition":
            args = [
                "payments",
                step["from_state"],
                step["to_state"],
                step["base_epoch"],
                step["open_for"],
                step["instance"],
                step["reason"],
                step["failure_rate"],
                step["slow_call_rate"],
                channel,
            ]
            accepted, _, _ = self.run_script("breaker_transition", args)
            assert accepted == 1, "the vector's fleet transition must be accepted"
        elif do == "fleet_probe":
            args = ["payments", step["epoch"], step["half_open_calls"], 60_000]
            status, _, _ = self.run_script("breaker_probe", args)
            assert status == 1, "the vector's fleet probe must be granted"
        elif do == "fleet_probe_done":
            args = [
                "payments",
                step["epoch"],
                step["outcome"],
                step["half_open_calls"],
                step["failure_rate_threshold"],
                step["slow_call_rate_threshold"],
                step["open_for"],
                step["instance"],
                channel,
            ]
            self.run_script("breaker_probe_done", args)
        else:
            assert do == "fleet_reset", f"unknown step {do!r}"
            self.run_script("breaker_reset", ["payments", "controlplane", channel])
        if lost:
            stored = self.raw.hget(self.keys.breakers, "payments")
            if stored is not None:
                self.lost_epochs.add(BreakerState.decode(stored).epoch)

    def exception(self, step: dict[str, Any]) -> Exception | None:
        if "raises" in step:
            if step["raises"] == "circuit_open":  # another (nested) breaker's rejection
                return CircuitOpenError("inventory", "open", 5.0)
            return self.classes[step["raises"]]("from the vector")
        return self.classes["failure"]("upstream down") if step["outcome"] == "failure" else None

    def call(self, step: dict[str, Any]) -> dict[str, Any]:
        breaker = self.breaker
        assert breaker is not None, "the case calls before its start step"
        ran = False
        error = self.exception(step) if step["do"] != "begin" else None

        def upstream() -> str:
            nonlocal ran
            ran = True
            self.clock.advance(step.get("duration", 0.0))
            if error is not None:
                raise error
            return "ok"

        try:
            if step["do"] == "call":
                breaker.call(upstream)
            elif step["do"] == "begin":
                context = self.calls[step["call"]] = contextvars.copy_context()
                context.run(breaker.__enter__)
                ran = True
            else:
                context = self.calls.pop(step["call"])
                upstream()
        except CircuitOpenError as exc:
            if not ran:
                return {"result": "rejected", "rejected": exc}
            if step["do"] == "end":
                context.run(breaker.__exit__, type(exc), exc, None)
            return {"result": "error"}
        except Exception as exc:
            if step["do"] == "end":
                context.run(breaker.__exit__, type(exc), exc, None)
            return {"result": "error"}
        if step["do"] == "end":
            context.run(breaker.__exit__, None, None, None)
        return {"result": "ok"}


@pytest.fixture
def case_clock(monkeypatch: pytest.MonkeyPatch) -> CaseClock:
    """The breaker modules and the breaker scripts read this clock, not the machine's."""
    clock = CaseClock()
    for module in (breaker_module, breaker_fleet, snapshot):
        monkeypatch.setattr(module, "time", clock)
    monkeypatch.setattr(breaker_fleet, "_SCRIPTS", ScriptsAtCaseTime(clock))
    return clock


STATS = ("calls", "successes", "failures", "slow", "ignored", "rejected", "would_reject")


def counted(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    return {key: after[key] - before[key] for key in STATS if after[key] != before[key]}


@pytest.mark.parametrize("case", MACHINE_CASES, ids=[case["name"] for case in MACHINE_CASES])
def test_machine_vector(
    case: dict[str, Any], case_clock: CaseClock, raw_client: redis.Redis, key_prefix: str
) -> None:
    run = MachineRun(case, key_prefix, raw_client, case_clock)
    case_clock.set(case["steps"][0]["at"])
    run.start()
    try:
        for index, step in enumerate(case["steps"]):
            where = f"step {index} ({step['do']} at {step['at']})"
            before = run.breaker.stats() if run.breaker is not None else None
            del run.reported[:]
            observed = run.step(step)
            if run.breaker is None:  # steps of the fleet before this instance starts
                assert (step["state"], step["transitions"], run.reported) == (None, [], []), where
                continue
            after = run.breaker.stats()  # reads the state, as a service would
            assert after["state"] == step["state"], where
            assert run.reported == step["transitions"], where
            if "result" in step:
                assert observed["result"] == step["result"], where
            if step.get("result") == "rejected":
                rejected = observed["rejected"]
                assert rejected.state == step["rejected_state"], where
                if step["retry_after"] is None:
                    assert rejected.retry_after is None, where
                else:
                    assert rejected.retry_after == pytest.approx(step["retry_after"]), where
            if "counted" in step and before is not None:
                assert counted(before, after) == step["counted"], where
            if "shared" in step:
                stored = raw_client.hget(run.keys.breakers, "payments")
                if step["shared"] is None:
                    assert stored is None, where
                else:
                    assert stored is not None, where
                    document = json.loads(stored)
                    if document.get("instance") == run.client.instance_id:
                        document["instance"] = "self"
                    subset = {key: document.get(key) for key in step["shared"]}
                    assert subset == step["shared"], where
    finally:
        run.close()
