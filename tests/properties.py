"""What the property tests share: their settings, strategies for policy input, and a
snapshot of everything stored, to show that a refused input changed nothing.

The settings keep the suite fast and reproducible: a bounded number of examples,
no deadline (a shared CI machine is slow at times), the same examples on every
run (``derandomize``) and no example database. A failure found once is kept
as an explicit ``@example`` next to the test.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from controlplane.audit.models import AuditEntry
from controlplane.policies.models import Environment, Policy, PolicyVersion
from controlplane.protocol.keys import NAME_PATTERN
from controlplane.protocol.schema import CONFIG_TYPES, KINDS, SPECS, FieldSpec
from controlplane.redis_connection import get_redis

PROPERTIES = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    # No "explain" phase: it traces every line of the product, and so is slow.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
    # Fixtures (database, Redis, clients) are set up once per test, not per example:
    # the properties hold whatever earlier examples left behind.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# Numbers JSON can carry that Python cannot always turn into a float.
huge_integers = st.integers(min_value=-(10**400), max_value=10**400)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_integers
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
# What Python's json.loads also accepts (and so the API, the import and Redis readers).
json_loads_values = json_values | st.sampled_from([float("nan"), float("inf"), float("-inf")])

_DURATION_TEXT = st.text(alphabet="0123456789.mshd -", max_size=8)
_NUMBER_TEXT = st.text(alphabet="0123456789.-e+_ ", max_size=8)


def nested(depth: int) -> Any:
    """A value ``depth`` lists deep: ``[[...[1]...]]``."""
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def near_valid(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Values a real user might send for ``spec``: right and wrong in the ways that matter."""
    options: list[st.SearchStrategy[Any]] = [st.just(spec.default)]
    if spec.choices:
        options.append(st.sampled_from(spec.choices))
        options.append(st.sampled_from([c.upper() for c in spec.choices]))
    if spec.widget == "duration":
        options += [_DURATION_TEXT, st.floats(min_value=-1, max_value=400 * 86400)]
    if spec.widget == "number" or spec.minimum is not None:
        options += [
            st.integers(min_value=-5, max_value=2_000_000_000),
            st.floats(min_value=-5, max_value=200),
            _NUMBER_TEXT,
        ]
    if spec.widget == "checkbox":
        options.append(st.sampled_from(["true", "false", "on", "off", "1", "0", "yes", "maybe"]))
    if spec.widget == "list":
        names = st.text(alphabet=string.ascii_letters + "._ ,", min_size=1, max_size=12)
        options += [names, st.lists(names, max_size=3)]
    if spec.name == "value_type":
        options.append(st.sampled_from(CONFIG_TYPES))
    if spec.name == "pattern":
        options.append(st.text(alphabet="ab[](){}*+?\\|^$.0123456789,", max_size=10))
    if spec.name == "json_schema":
        options.append(
            st.fixed_dictionaries(
                {},
                optional={
                    "type": st.sampled_from(["string", "integer", "object", "nope", 12]),
                    "minimum": json_scalars,
                    "maxLength": json_scalars,
                    "pattern": st.text(alphabet="ab[](){}*+?\\", max_size=6),
                    "$ref": st.sampled_from(["#", "#/$defs/x", "https://example.invalid/s"]),
                    "multipleOf": st.sampled_from([0.1, 1e-308, 3, 0]),
                },
            )
        )
    return st.one_of(*options)


def field_values(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Anything JSON (and json.loads) can carry, or a near-valid value for the field."""
    return near_valid(spec) | json_loads_values


def spec_data(kind: str) -> st.SearchStrategy[dict[Any, Any]]:
    """A spec body for ``kind``: some of its fields with arbitrary values and, now and
    then, fields it does not have (named by a text or, as YAML allows, a number)."""
    fields = SPECS[kind].fields
    known = st.lists(
        st.sampled_from(fields), unique_by=lambda f: f.name, max_size=len(fields)
    ).flatmap(lambda chosen: st.fixed_dictionaries({f.name: field_values(f) for f in chosen}))
    unknown = st.dictionaries(st.text(max_size=12) | st.integers(), json_values, max_size=2)
    with_unknown = st.sampled_from([False, False, False, True])
    return st.builds(
        lambda data, extra, mixed: {**extra, **data} if mixed else data,
        known,
        unknown,
        with_unknown,
    )


kinds = st.sampled_from(KINDS)
# Policy names: valid ones, and any text.
names = st.from_regex(NAME_PATTERN) | st.text(max_size=12)


def stored_state() -> dict[str, Any]:
    """Every policy, version, audit entry and revision in the database, and what Redis holds."""
    redis = get_redis()
    environments = list(Environment.objects.order_by("name"))
    return {
        "environments": [(e.name, e.revision) for e in environments],
        "policies": list(
            Policy.objects.order_by("pk").values_list(
                "environment__name", "kind", "name", "version", "deleted", "spec"
            )
        ),
        "versions": PolicyVersion.objects.count(),
        "audit": AuditEntry.objects.count(),
        "redis": [
            (redis.hgetall(e.keys().policies), redis.get(e.keys().meta)) for e in environments
        ],
    }
