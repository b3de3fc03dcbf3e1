"""Policy forms, built from the schema so each field's rules and help live in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms

from controlplane.policies.models import (
    MAX_TAG_LENGTH,
    MAX_TAGS,
    Policy,
    PolicyVersion,
    check_tags,
    check_team,
    max_length,
)
from controlplane.protocol.limits import LimitExceeded, loads_json
from controlplane.protocol.schema import (
    KIND_LABELS,
    FieldSpec,
    PolicyError,
    is_secret,
    kind_spec,
    masked,
    validate_name,
    validate_spec,
    value_text,
)

SECRET_PLACEHOLDER = "unchanged (secret)"


# How a spec value is written in a form field: as text, without its unit.
display_value = value_text


def _form_field(spec: FieldSpec) -> forms.Field:
    common: dict[str, Any] = {
        # A percentage is typed as a bare number: the label says what it counts in.
        "label": f"{spec.label} (%)" if spec.unit == "%" else spec.label,
        "help_text": spec.help,
        "required": False,
    }
    if spec.widget == "select":
        return forms.ChoiceField(choices=[(c, c.replace("_", " ")) for c in spec.choices], **common)
    if spec.widget == "checkbox":
        return forms.BooleanField(**common)
    if spec.widget == "json":
        return forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), **common)
    return forms.CharField(**common)


class PolicyForm(forms.Form):
    """Create or edit one policy of ``kind``; ``clean()`` runs the shared schema validation."""

    name = forms.CharField(label="Name", max_length=max_length(Policy, "name"), required=False)
    reason = forms.CharField(
        label="Reason (optional)",
        required=False,
        max_length=max_length(PolicyVersion, "reason"),
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Why the change: shown in the history and the audit log.",
    )
    expected_version = forms.IntegerField(widget=forms.HiddenInput, required=False)
    tags = forms.CharField(
        label="Tags",
        required=False,
        help_text=f"Up to {MAX_TAGS} tags of lower-case letters, digits and dashes, "
        "separated by commas (payments, tier-1): for finding policies, never sent to services.",
    )
    team = forms.CharField(
        label="Owner team",
        required=False,
        max_length=max_length(Policy, "team"),
        help_text="Who to ask about this policy.",
    )

    def __init__(
        self,
        kind: str,
        *args: Any,
        current: dict[str, Any] | None = None,
        creating: bool = True,
        tags: Sequence[str] = (),
        team: str = "",
        **kwargs: Any,
    ) -> None:
        self.kind = kind
        self.kind_spec = kind_spec(kind)
        self.current = current
        self.creating = creating
        self.spec: dict[str, Any] | None = None
        if current is not None and "initial" not in kwargs:
            kwargs["initial"] = self.initial_from(current)
        elif "initial" not in kwargs:
            kwargs["initial"] = self.initial_from(self.kind_spec.defaults())
        kwargs["initial"].setdefault("tags", ", ".join(tags))
        kwargs["initial"].setdefault("team", team)
        super().__init__(*args, **kwargs)
        if not creating:
            del self.fields["name"]
        for field_spec in self.kind_spec.fields:
            self.fields[field_spec.name] = _form_field(field_spec)
        if self.secret_is_kept:
            self.fields["value"].widget.attrs["placeholder"] = SECRET_PLACEHOLDER
        self.order_fields(
            ["name", *(f.name for f in self.kind_spec.fields), "tags", "team", "reason"]
        )

    @property
    def secret_is_kept(self) -> bool:
        return self.current is not None and is_secret(self.kind, self.current)

    def initial_from(self, spec: dict[str, Any]) -> dict[str, Any]:
        shown = masked(self.kind, spec, mask="")  # a secret is never sent back to the browser
        initial: dict[str, Any] = {name: display_value(value) for name, value in shown.items()}
        for field_spec in self.kind_spec.fields:
            if field_spec.widget == "checkbox":
                initial[field_spec.name] = bool(spec.get(field_spec.name))
        return initial

    def field_groups(self) -> list[forms.BoundField]:
        return [self[f.name] for f in self.kind_spec.fields]

    def metadata_fields(self) -> list[forms.BoundField]:
        """The fields about the policy rather than of it: its tags and owner team."""
        return [self["tags"], self["team"]]

    def _sent_or_initial(self, name: str) -> str:
        """A field the request left out keeps its value (a client that knows no tags)."""
        if name not in self.data:
            return str(self.initial.get(name, ""))
        return str(self.cleaned_data.get(name) or "")

    def clean_tags(self) -> list[str]:
        try:
            return check_tags(self._sent_or_initial("tags"))
        except PolicyError as exc:
            raise forms.ValidationError(exc.errors["tags"]) from None

    def clean_team(self) -> str:
        try:
            return check_team(self._sent_or_initial("team"))
        except PolicyError as exc:
            raise forms.ValidationError(exc.errors["team"]) from None

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if self.creating:
            try:
                validate_name(cleaned.get("name", ""))
            except PolicyError as exc:
                self.add_error("name", exc.errors["name"])
        data: dict[str, Any] = {}
        for field_spec in self.kind_spec.fields:
            raw = cleaned.get(field_spec.name)
            if field_spec.nullable and raw == "":
                raw = None
            data[field_spec.name] = raw
        if self.kind == "config":
            self._prepare_config_value(data)
        if self.errors:
            return cleaned
        try:
            self.spec = validate_spec(self.kind, data)
        except PolicyError as exc:
            for name, messages in exc.errors.items():
                self.add_error(name if name in self.fields else None, messages)
        return cleaned

    def _prepare_config_value(self, data: dict[str, Any]) -> None:
        if self.secret_is_kept and data.get("value") in ("", None) and self.current is not None:
            data["value"] = self.current["value"]  # left blank: keep the secret
        elif data.get("value_type") == "json" and isinstance(data.get("value"), str):
            try:
                data["value"] = loads_json(data["value"], what="The value")
            except LimitExceeded as exc:
                self.add_error("value", str(exc))
                data["value"] = None
            except ValueError as exc:
                self.add_error("value", f"Not valid JSON: {exc}.")
                data["value"] = None

    @property
    def title(self) -> str:
        return KIND_LABELS[self.kind]


class PolicyFilterForm(forms.Form):
    """The policy list's search and filters, read from the query string (bookmarkable)."""

    q = forms.CharField(label="Name contains", required=False, max_length=100)
    kind = forms.ChoiceField(
        label="Kind", required=False, choices=[("", "any kind"), *KIND_LABELS.items()]
    )
    tag = forms.CharField(label="Tag", required=False, max_length=MAX_TAG_LENGTH)
    team = forms.CharField(
        label="Owner team", required=False, max_length=max_length(Policy, "team")
    )

    def __init__(
        self, *args: Any, tags: Sequence[str] = (), teams: Sequence[str] = (), **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        # Offered as choices where scripts add nothing; any value is still accepted, so a
        # bookmark of a tag no policy has any more finds nothing instead of failing.
        self.fields["tag"].widget = forms.Select(choices=[("", "any tag"), *((t, t) for t in tags)])
        self.fields["team"].widget = forms.Select(
            choices=[("", "any team"), *((t, t) for t in teams)]
        )

    @property
    def active(self) -> bool:
        return any(self.data.get(name) for name in self.fields)

    def matches(self, policy: Policy) -> bool:
        """Whether ``policy`` passes every filter given (the valid ones: errors show)."""
        cleaned = self.cleaned_data if hasattr(self, "cleaned_data") else {}
        query = (cleaned.get("q") or "").strip().lower()
        tag = (cleaned.get("tag") or "").strip().lower()
        team = (cleaned.get("team") or "").strip().lower()
        return (
            (not query or query in policy.name.lower())
            and (not cleaned.get("kind") or policy.kind == cleaned["kind"])
            and (not tag or tag in policy.tags)
            and (not team or policy.team.lower() == team)
        )
