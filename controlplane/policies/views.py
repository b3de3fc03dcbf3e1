from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import redis
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.middleware import HtmxDetails

from controlplane.accounts.actors import Actor
from controlplane.accounts.roles import Role, abilities_in, grants_of, role_required
from controlplane.policies.access import environment_for, environments_for, policy_for
from controlplane.policies.actions import (
    StaleVersionError,
    do_create_environment,
    do_create_policy,
    do_delete_policy,
    do_rollback_policy,
    do_update_policy,
)
from controlplane.policies.config_as_code import (
    FORMATS,
    apply_import,
    dump,
    export_environment,
    parse,
    plan_import,
)
from controlplane.policies.diff import (
    FieldDiff,
    ThreeWayDiff,
    masked_spec,
    rebase_spec,
    spec_diff,
    three_way,
)
from controlplane.policies.forms import PolicyFilterForm, PolicyForm
from controlplane.policies.models import (
    Environment,
    Policy,
    PolicyVersion,
    check_reason,
    check_tags,
    check_team,
)
from controlplane.policies.request_views import announce_opened, guarded_notice, propose
from controlplane.policies.requests import Proposal, import_proposals
from controlplane.protocol.documents import PolicyDocument, ProtocolError
from controlplane.protocol.limits import MAX_IMPORT_BYTES
from controlplane.protocol.schema import KIND_LABELS, KINDS, PolicyError, value_text
from controlplane.redis_connection import get_redis, redis_answers

logger = logging.getLogger(__name__)
# The session key under which a save hands its revision to the policy's page.
ROLLOUT_SESSION_KEY = "rollout"


class HtmxHttpRequest(HttpRequest):
    htmx: HtmxDetails


def _published_versions(environments: list[Environment]) -> dict[str, dict[str, int]] | None:
    """Return ``{environment: {field: version}}`` as Redis holds it, or None if unreachable."""
    try:
        with get_redis().pipeline(transaction=False) as pipe:
            for environment in environments:
                pipe.hgetall(environment.keys().policies)
            # A key of another type fails for its environment only (untrusted input).
            hashes = pipe.execute(raise_on_error=False)
    except redis.RedisError as exc:
        logger.warning("Dashboard cannot read Redis: %s", exc)
        return None
    published: dict[str, dict[str, int]] = {}
    for environment, documents in zip(environments, hashes, strict=True):
        versions = published[environment.name] = {}
        if isinstance(documents, redis.ConnectionError | redis.TimeoutError):
            logger.warning("Dashboard cannot read Redis: %s", documents)
            return None
        if isinstance(documents, Exception):  # e.g. WRONGTYPE: nothing of it is published
            logger.warning("Dashboard: %s holds no policies hash: %s", environment, documents)
            continue
        for field, raw in documents.items():
            try:
                versions[field] = PolicyDocument.decode(raw).version
            except ProtocolError:
                versions[field] = -1
    return published


def confirm_saved(request: HttpRequest, text: str, saved: Policy | None = None) -> None:
    """Say that a change was saved and, while Redis is down, that services get it later.

    With ``saved``, the policy's page then follows its revision to the fleet
    ("applied by 11 of 12 instances", ``live/rollout.py``).
    """
    if saved is not None:
        request.session[ROLLOUT_SESSION_KEY] = {
            "policy": saved.pk,
            "revision": saved.revision,
            "since": time.time(),
        }
    if redis_answers():
        messages.success(request, text)
    else:
        messages.warning(
            request,
            f"{text} Redis cannot be reached: services get this change when it answers "
            "again (the reconciler publishes it).",
        )


@role_required(Role.VIEWER)
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """Every policy by environment, with its published version; searched and filtered
    by the query string (``q``, ``kind``, ``tag``, ``team``), on the server."""
    grants = grants_of(request.user)
    environments = environments_for(grants)
    policies = list(
        Policy.objects.filter(deleted=False, environment__in=environments).select_related(
            "environment"
        )
    )
    filters = PolicyFilterForm(
        request.GET,
        tags=sorted({tag for policy in policies for tag in policy.tags}),
        teams=sorted({policy.team for policy in policies if policy.team}, key=str.lower),
    )
    filters.is_valid()  # the errors show; the valid filters still apply
    shown = [policy for policy in policies if filters.matches(policy)]
    by_environment: dict[int, list[Policy]] = defaultdict(list)
    for policy in shown:
        by_environment[policy.environment_id].append(policy)
    published = _published_versions(environments)
    rows = [
        {
            "environment": environment,
            "can": abilities_in(grants, environment.name),
            "policies": [
                {
                    "policy": policy,
                    "published_version": (published or {})
                    .get(environment.name, {})
                    .get(policy.field),
                }
                for policy in by_environment[environment.pk]
            ],
        }
        for environment in environments
    ]
    return render(
        request,
        "policies/dashboard.html",
        {
            "rows": rows,
            "redis_reachable": published is not None,
            "kinds": KIND_LABELS,
            "filters": filters,
            "shown_count": len(shown),
            "total_count": len(policies),
        },
    )


@role_required(Role.VIEWER)
@require_GET
def policy_detail(request: HttpRequest, environment: str, kind: str, name: str) -> HttpResponse:
    policy = policy_for(grants_of(request.user), Role.VIEWER, environment, kind, name)
    rollout = request.session.pop(ROLLOUT_SESSION_KEY, None)
    if not isinstance(rollout, dict) or rollout.get("policy") != policy.pk:
        rollout = None
    versions = list(policy.versions.order_by("-version"))
    history = []
    for index, version in enumerate(versions):
        previous = versions[index + 1] if index + 1 < len(versions) else None
        history.append(
            {
                "version": version,
                "diff": spec_diff(
                    kind,
                    None if previous is None or previous.deleted else previous.spec,
                    None if version.deleted else version.spec,
                ),
            }
        )
    return render(
        request,
        "policies/detail.html",
        {
            "policy": policy,
            "spec_rows": masked_spec(kind, policy.spec),
            "history": history,
            "kind_label": KIND_LABELS[kind],
            "rollout": rollout,
            "can": abilities_in(request.user, environment),
        },
    )


def _with_metadata(
    diff: list[FieldDiff], policy: Policy | None, form: PolicyForm
) -> list[FieldDiff]:
    """The preview's changes: the spec's, then the tags' and team's."""
    old_tags, old_team = (policy.tags, policy.team) if policy else ([], "")
    new_tags, new_team = form.cleaned_data["tags"], form.cleaned_data["team"]
    if old_tags != new_tags:
        diff = [*diff, FieldDiff("tags", "Tags", ", ".join(old_tags), ", ".join(new_tags))]
    if old_team != new_team:
        diff = [*diff, FieldDiff("team", "Owner team", old_team, new_team)]
    return diff


def _form_response(
    request: HtmxHttpRequest, form: PolicyForm, context: dict[str, Any], status: int = 200
) -> HttpResponse:
    """The whole page, or only the form for htmx requests (validation as you type)."""
    template = "policies/_policy_form.html" if request.htmx else "policies/edit.html"
    guarded = guarded_notice(context["environment"])
    save_label = "Propose change" if guarded else "Save"
    context = {**context, "guarded_notice": guarded, "save_label": save_label}
    response = render(request, template, {"form": form, **context}, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _update_proposal(policy: Policy, form: PolicyForm, expected: int | None) -> Proposal:
    """The edit as a proposal; tags and team only if the form changes them."""
    tags, team = form.cleaned_data["tags"], form.cleaned_data["team"]
    return Proposal(
        "update",
        policy.kind,
        policy.name,
        form.spec,
        expected,
        None if tags == policy.tags else tags,
        None if team == policy.team else team,
    )


def _proposed(
    request: HtmxHttpRequest, form: PolicyForm, context: dict[str, Any], proposal: Proposal
) -> HttpResponse:
    """Open a change request for the form's change (guarded environment); its errors
    go to the form's fields (a stale base to ``expected_version``)."""
    try:
        opened = propose(request, context["environment"], [proposal], form.cleaned_data["reason"])
    except PolicyError as exc:
        for field, errors in exc.errors.items():
            field = "expected_version" if field == "base_version" else field
            form.add_error(field if field in form.fields else None, errors)
        return _form_response(request, form, context, status=422)
    return announce_opened(request, opened)


@role_required(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def policy_create(request: HtmxHttpRequest, environment: str, kind: str) -> HttpResponse:
    env = environment_for(grants_of(request.user), Role.EDITOR, environment)
    if kind not in KINDS:
        raise Http404("No such kind of policy.")
    context: dict[str, Any] = {"environment": env, "kind": kind, "creating": True}
    if request.method == "GET":
        return _form_response(request, PolicyForm(kind), context)
    form = PolicyForm(kind, request.POST)
    if not form.is_valid() or form.spec is None:
        return _form_response(request, form, context, status=422)
    if request.POST.get("action") != "save":
        context["diff"] = _with_metadata(spec_diff(kind, None, form.spec), None, form)
        return _form_response(request, form, context)
    if env.guarded:  # a change request instead
        tags, team = form.cleaned_data["tags"], form.cleaned_data["team"]
        proposal = Proposal("create", kind, form.cleaned_data["name"], form.spec, None, tags, team)
        return _proposed(request, form, context, proposal)
    try:
        policy = do_create_policy(
            env,
            kind,
            form.cleaned_data["name"],
            form.spec,
            Actor.from_request(request),
            form.cleaned_data["reason"],
            tags=form.cleaned_data["tags"],
            team=form.cleaned_data["team"],
        )
    except PolicyError as exc:
        for field, errors in exc.errors.items():
            form.add_error(field if field in form.fields else None, errors)
        return _form_response(request, form, context, status=422)
    confirm_saved(request, f"Created {KIND_LABELS[kind].lower()} {policy.name}.", policy)
    return redirect("policy-detail", env.name, kind, policy.name)


@role_required(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def policy_edit(request: HtmxHttpRequest, environment: str, kind: str, name: str) -> HttpResponse:
    """Edit a policy: checked as typed, previewed, then saved against the version loaded.

    A save refused because someone else saved first keeps this editor's work
    (``_conflict_response``).
    """
    policy = policy_for(grants_of(request.user), Role.EDITOR, environment, kind, name)
    context: dict[str, Any] = {
        "environment": policy.environment,
        "kind": kind,
        "policy": policy,
        "creating": False,
        # The tags and team this editor started from: they have no versions to look up.
        "loaded_metadata": {
            "tags": str(request.POST.get("loaded_tags", ", ".join(policy.tags))),
            "team": str(request.POST.get("loaded_team", policy.team)),
        },
    }
    if request.method == "GET":
        form = PolicyForm(
            kind, current=policy.spec, creating=False, tags=policy.tags, team=policy.team
        )
        form.initial["expected_version"] = policy.version
        return _form_response(request, form, context)
    form = PolicyForm(
        kind, request.POST, current=policy.spec, creating=False, tags=policy.tags, team=policy.team
    )
    if not form.is_valid() or form.spec is None:
        return _form_response(request, form, context, status=422)
    expected = form.cleaned_data.get("expected_version")
    if request.POST.get("action") != "save":
        context["diff"] = _with_metadata(spec_diff(kind, policy.spec, form.spec), policy, form)
        return _form_response(request, form, context)
    if policy.environment.guarded:  # a change request instead
        return _proposed(request, form, context, _update_proposal(policy, form, expected))
    try:
        saved = do_update_policy(
            policy,
            form.spec,
            Actor.from_request(request),
            form.cleaned_data["reason"],
            expected_version=expected,
            tags=form.cleaned_data["tags"],
            team=form.cleaned_data["team"],
        )
    except StaleVersionError as exc:
        return _conflict_response(request, policy, form, exc.current, context)
    except PolicyError as exc:
        for field, errors in exc.errors.items():
            form.add_error(field if field in form.fields else None, errors)
        return _form_response(request, form, context, status=422)
    confirm_saved(request, f"Saved {KIND_LABELS[kind].lower()} {policy.name}.", saved)
    return redirect("policy-detail", policy.environment.name, kind, policy.name)


def _conflict_response(
    request: HtmxHttpRequest,
    policy: Policy,
    form: PolicyForm,
    current: PolicyVersion,
    context: dict[str, Any],
) -> HttpResponse:
    """A save refused because ``current`` was saved since this editor loaded the form.

    Nothing is lost: the form comes back holding this editor's changes re-applied on
    top of theirs (a field left as loaded takes their value, a changed one keeps
    mine), next to base, theirs and mine per field, with what saving would now
    change; one click previews it against their version. Always the whole page, with
    409, htmx or not: a Save replaces the page, never only the form.
    """
    assert form.spec is not None  # only a valid form is saved
    expected = form.cleaned_data.get("expected_version")
    loaded = policy.versions.filter(version=expected).first() if expected else None
    base = loaded.spec if loaded and not loaded.deleted else None
    policy.refresh_from_db()  # their tags and team (not versioned), the page's version
    mine = _edited_metadata(form.cleaned_data["tags"], form.cleaned_data["team"])
    theirs = _edited_metadata(policy.tags, policy.team)
    base_metadata = _loaded_metadata(context["loaded_metadata"], fallback=theirs)
    rebased = _rebased_form(
        request.POST,
        form,
        current,
        rebase_spec(base, current.spec, form.spec),
        rebase_spec(base_metadata, theirs, mine),
    )
    rows = three_way(policy.kind, base, current.spec, form.spec)
    rows += _metadata_three_way(form, base_metadata, theirs, mine)
    loaded_text = f"version {expected}" if expected else "the form"
    why = f", “{current.reason[:80]}”" if current.reason else ""
    context["conflict"] = {
        "version": current,
        "loaded": expected,
        "rows": rows,
        "caption": f"What changed since you loaded {loaded_text}, field by field",
        "base_heading": f"Base ({f'v{expected}, ' if expected else ''}what you loaded)",
        "theirs_heading": f"Theirs (v{current.version} by {current.author_name}{why})",
    }
    context["loaded_metadata"] = {"tags": _metadata_text(theirs["tags"]), "team": policy.team}
    if rebased.is_valid() and rebased.spec is not None:
        context["diff"] = _with_metadata(
            spec_diff(policy.kind, current.spec, rebased.spec), policy, rebased
        )
    response = render(request, "policies/edit.html", {"form": rebased, **context}, status=409)
    patch_vary_headers(response, ["HX-Request"])
    return response


def _edited_metadata(tags: Sequence[str], team: str) -> dict[str, Any]:
    """Tags and team as one record, so a rebase treats them like a spec's fields."""
    return {"tags": list(tags), "team": team}


def _loaded_metadata(sent: dict[str, str], *, fallback: dict[str, Any]) -> dict[str, Any]:
    """The tags and team the editor loaded, as the form sent them back; ``fallback``
    where they are not readable (untrusted input), where the editor's values win."""
    try:
        return _edited_metadata(check_tags(sent["tags"]), check_team(sent["team"]))
    except PolicyError:
        return fallback


def _metadata_three_way(
    form: PolicyForm, base: dict[str, Any], theirs: dict[str, Any], mine: dict[str, Any]
) -> list[ThreeWayDiff]:
    """``three_way`` of the tags and team, which either side may change too."""
    return [
        ThreeWayDiff(
            name,
            str(form.fields[name].label),
            _metadata_text(base[name]),
            _metadata_text(theirs[name]),
            _metadata_text(mine[name]),
            theirs[name] != base[name],
            mine[name] != base[name],
        )
        for name in ("tags", "team")
        if base[name] != theirs[name] or base[name] != mine[name]
    ]


def _metadata_text(value: str | list[str]) -> str:
    """Tags or a team as the form and the tables write them."""
    return ", ".join(value) if isinstance(value, list) else value


def _rebased_form(
    sent: QueryDict,
    form: PolicyForm,
    current: PolicyVersion,
    spec: dict[str, Any],
    metadata: dict[str, Any],
) -> PolicyForm:
    """``form`` as if the editor had loaded ``current`` and made the same changes:
    fields holding ``spec`` and ``metadata``, the reason kept, the version expected
    now theirs. A field the editor changed keeps the text they typed (``sent``)."""
    assert form.spec is not None
    data = sent.copy()
    shown = form.initial_from(spec)  # a secret left as theirs shows blank: "keep it"
    for name, value in spec.items():
        if name in form.fields and value != form.spec.get(name):
            data[name] = value_text(shown.get(name))
    data["tags"] = _metadata_text(metadata["tags"])
    data["team"] = metadata["team"]
    data["expected_version"] = str(current.version)
    return PolicyForm(
        form.kind,
        data,
        current=current.spec,
        creating=False,
        tags=metadata["tags"],
        team=metadata["team"],
    )


@role_required(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def policy_delete(request: HttpRequest, environment: str, kind: str, name: str) -> HttpResponse:
    """Delete a policy (its history is kept): first what it changes, a reason, a confirm."""
    policy = policy_for(grants_of(request.user), Role.EDITOR, environment, kind, name)
    actor = Actor.from_request(request)
    return _confirmed(
        request,
        policy,
        to=None,
        heading=f"Delete {policy.name} from {policy.environment.name}",
        consequence=(
            "Every instance drops it at once and falls back to the defaults in its code; "
            "the history is kept and any version can be restored."
        ),
        button=f"Delete {policy.name} in {policy.environment.name}",
        apply=lambda reason, base: do_delete_policy(policy, actor, reason, expected_version=base),
        proposal=Proposal("delete", kind, policy.name),
        done=f"Deleted {KIND_LABELS[kind].lower()} {name}.",
    )


@role_required(Role.VIEWER)
@require_GET
def policy_compare(request: HttpRequest, environment: str, kind: str, name: str) -> HttpResponse:
    policy = policy_for(grants_of(request.user), Role.VIEWER, environment, kind, name)
    try:
        first, second = int(request.GET["a"]), int(request.GET["b"])
    except (KeyError, ValueError):
        first, second = max(policy.version - 1, 1), policy.version
    if not (0 <= first <= policy.version and 0 <= second <= policy.version):
        raise Http404("No such version.")
    versions = {v.version: v for v in policy.versions.filter(version__in=[first, second])}
    if first not in versions or second not in versions:
        raise Http404("No such version.")
    old, new = versions[first], versions[second]
    return render(
        request,
        "policies/compare.html",
        {
            "policy": policy,
            "old": old,
            "new": new,
            "diff": spec_diff(
                kind, None if old.deleted else old.spec, None if new.deleted else new.spec
            ),
            "versions": range(1, policy.version + 1),
            # Either side, if it is not what is live now: each goes through the restore page.
            "restorable": sorted({first, second} - {policy.version}),
            "can": abilities_in(request.user, environment),
        },
    )


@role_required(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def policy_restore(
    request: HttpRequest, environment: str, kind: str, name: str, version: int
) -> HttpResponse:
    """Restore an earlier version as a new one: first what it changes, a reason, a confirm."""
    policy = policy_for(grants_of(request.user), Role.EDITOR, environment, kind, name)
    # Compared first: a number past any database integer never reaches a query.
    target = policy.versions.filter(version=version).first() if version < policy.version else None
    if target is None:
        raise Http404("No such earlier version.")
    actor = Actor.from_request(request)
    return _confirmed(
        request,
        policy,
        to=target,
        heading=f"Restore v{version} of {policy.name} in {policy.environment.name}",
        consequence=(
            f"Saved as a new version, v{policy.version + 1}, and published to every "
            "instance at once; the history keeps every version."
        ),
        button=f"Restore v{version} in {policy.environment.name}",
        apply=lambda reason, base: do_rollback_policy(
            policy, version, actor, reason, expected_version=base
        ),
        proposal=Proposal("rollback", kind, policy.name, rollback_to=version),
        done=f"Restored version {version} of {name} as a new version.",
    )


def _confirmed(
    request: HttpRequest,
    policy: Policy,
    *,
    to: PolicyVersion | None,
    heading: str,
    consequence: str,
    button: str,
    apply: Callable[[str, int], Policy],
    proposal: Proposal,
    done: str,
) -> HttpResponse:
    """A change that needs a review: GET shows it, POST applies it with a reason.

    The page shows the field-by-field difference between what is live now and
    what the change leaves (``to``: a version, or None once deleted). POST applies
    it only with a reason, and only if the policy is still the version that
    difference was computed against (``base_version``); otherwise nothing
    changes and the page shows the new difference to confirm again. In a guarded
    environment POST opens a change request for ``proposal`` (based on the same
    version) instead, and goes to it.
    """
    errors: dict[str, list[str]] = {}
    status = 200
    reason = str(request.POST.get("reason", "")).strip()
    if request.method == "POST":
        base = _int_or_none(request.POST.get("base_version"))
        try:
            check_reason(reason)
        except PolicyError as exc:
            errors.update(exc.errors)
        if not errors and not reason:
            errors["reason"] = ["Say why: it is shown in the history and the audit log."]
        if not errors and base is None:
            errors["base_version"] = ["The version this change was reviewed against is missing."]
        if not errors and base is not None:
            try:
                if policy.environment.guarded:  # a change request instead
                    based = replace(proposal, base_version=base)
                    opened = propose(request, policy.environment, [based], reason)
                    return announce_opened(request, opened)
                saved = apply(reason, base)
            except StaleVersionError as exc:
                policy.refresh_from_db()
                errors["base_version"] = [
                    f"{exc.current.author_name} saved v{exc.current.version} meanwhile: "
                    "nothing was changed. Here is what it would change now."
                ]
                status = 409
            except PolicyError as exc:
                errors.update(exc.errors)
                if "base_version" in exc.errors:  # a request's base moved: show it anew
                    policy.refresh_from_db()
                    status = 409
            else:
                if saved.deleted:
                    confirm_saved(request, done)
                    return redirect("dashboard")
                confirm_saved(request, done, saved)
                return redirect("policy-detail", policy.environment.name, policy.kind, policy.name)
        if status == 200:
            status = 422
    current = policy.versions.get(version=policy.version)
    after = None if to is None or to.deleted else to.spec
    return render(
        request,
        "policies/confirm.html",
        {
            "policy": policy,
            "current": current,
            "target": to,
            "diff": spec_diff(policy.kind, None if current.deleted else current.spec, after),
            "heading": heading,
            "consequence": consequence,
            "button": "Propose change" if policy.environment.guarded else button,
            "guarded_notice": guarded_notice(policy.environment),
            "errors": errors,
            "reason": reason,
        },
        status=status,
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


@role_required(Role.VIEWER)
@require_GET
def environment_export(request: HttpRequest, environment: str, fmt: str) -> HttpResponse:
    if fmt not in FORMATS:
        raise Http404("Export as yaml or json.")
    env = environment_for(grants_of(request.user), Role.VIEWER, environment)
    try:
        document = export_environment(env)
    except PolicyError as exc:
        return HttpResponse(
            f"Cannot export {env.name}. {exc}", content_type="text/plain", status=409
        )
    content_type = "application/json" if fmt == "json" else "application/yaml"
    response = HttpResponse(dump(document, fmt), content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{env.name}-policies.{fmt}"'
    return response


def _import_text(request: HttpRequest) -> str:
    """The uploaded file's text, or else the pasted text; a file over the limit is not read."""
    upload = request.FILES.get("file")
    if upload is None:
        return str(request.POST.get("text", ""))
    if (upload.size or 0) > MAX_IMPORT_BYTES:
        raise PolicyError({"file": [f"The file is over {MAX_IMPORT_BYTES // 2**20} MiB."]})
    content: bytes = upload.read()
    return content.decode("utf-8", "replace")


@role_required(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def environment_import(request: HttpRequest, environment: str) -> HttpResponse:
    """Upload or paste a document; preview the changes; apply them all or none."""
    env = environment_for(grants_of(request.user), Role.EDITOR, environment)
    context: dict[str, Any] = {
        "environment": env,
        "text": "",
        "prune": False,
        "guarded_notice": guarded_notice(env),
    }
    if request.method == "POST":
        prune = request.POST.get("prune") == "on"
        context["prune"] = prune
        try:
            text = _import_text(request)
            context["text"] = text
            document = parse(text)
            if request.POST.get("action") == "apply" and env.guarded:  # one request for the file
                planned = plan_import(env, document, prune=prune)
                reason = str(request.POST.get("reason", ""))
                return announce_opened(
                    request, propose(request, env, import_proposals(env, planned), reason)
                )
            if request.POST.get("action") == "apply":
                changes, _ = apply_import(
                    env,
                    document,
                    Actor.from_request(request),
                    prune=prune,
                    reason=request.POST.get("reason", ""),
                )
                confirm_saved(request, f"Applied {len(changes)} change(s) to {env.name}.")
                return redirect("dashboard")
            context["changes"] = plan_import(env, document, prune=prune)
        except PolicyError as exc:
            context["errors"] = exc.errors
            return render(request, "policies/import.html", context, status=422)
    return render(request, "policies/import.html", context)


@role_required(Role.ADMIN, everywhere=True)
@require_POST
def environment_create(request: HttpRequest) -> HttpResponse:
    try:
        environment = do_create_environment(
            request.POST.get("name", "").strip(),
            Actor.from_request(request),
            request.POST.get("description", "").strip(),
        )
    except PolicyError as exc:
        messages.error(request, f"Nothing was created. {exc}")
    else:
        messages.success(request, f"Created environment {environment.name}.")
    return redirect("dashboard")
