from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import redis
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
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
from controlplane.policies.diff import FieldDiff, masked_spec, spec_diff
from controlplane.policies.forms import PolicyFilterForm, PolicyForm
from controlplane.policies.models import Environment, Policy, PolicyVersion, check_reason
from controlplane.protocol.documents import PolicyDocument, ProtocolError
from controlplane.protocol.limits import MAX_IMPORT_BYTES
from controlplane.protocol.schema import KIND_LABELS, KINDS, PolicyError
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
    response = render(request, template, {"form": form, **context}, status=status)
    patch_vary_headers(response, ["HX-Request"])
    return response


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
    policy = policy_for(grants_of(request.user), Role.EDITOR, environment, kind, name)
    context: dict[str, Any] = {
        "environment": policy.environment,
        "kind": kind,
        "policy": policy,
        "creating": False,
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
        # Nothing is lost: the form keeps this editor's values, now based on the version
        # saved meanwhile, and says what theirs changed and what saving these would do.
        loaded = policy.versions.filter(version=expected).first() if expected else None
        current = exc.current
        context["conflict"] = {
            "version": current,
            "diff": spec_diff(kind, loaded.spec if loaded else None, current.spec),
            "yours": spec_diff(kind, current.spec, form.spec),
        }
        rebased = request.POST.copy()
        rebased["expected_version"] = str(current.version)
        form.data = rebased
        return _form_response(request, form, context, status=409)
    except PolicyError as exc:
        for field, errors in exc.errors.items():
            form.add_error(field if field in form.fields else None, errors)
        return _form_response(request, form, context, status=422)
    confirm_saved(request, f"Saved {KIND_LABELS[kind].lower()} {policy.name}.", saved)
    return redirect("policy-detail", policy.environment.name, kind, policy.name)


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
    done: str,
) -> HttpResponse:
    """A change that needs a review: GET shows it, POST applies it with a reason.

    The page shows the field-by-field difference between what is live now and
    what the change leaves (``to``: a version, or None once deleted). POST applies
    it only with a reason, and only if the policy is still the version that
    difference was computed against (``base_version``); otherwise nothing
    changes and the page shows the new difference to confirm again.
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
            "button": button,
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
    context: dict[str, Any] = {"environment": env, "text": "", "prune": False}
    if request.method == "POST":
        prune = request.POST.get("prune") == "on"
        context["prune"] = prune
        try:
            text = _import_text(request)
            context["text"] = text
            document = parse(text)
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
