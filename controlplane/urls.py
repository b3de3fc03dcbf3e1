from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.generic import RedirectView

from controlplane.accounts import user_views
from controlplane.accounts import views as account_views
from controlplane.accounts.login import LoginView
from controlplane.alerts import views as alert_views
from controlplane.api.views import api
from controlplane.audit import views as audit_views
from controlplane.live import rollout
from controlplane.live import views as live_views
from controlplane.ops import health
from controlplane.policies import environment_views, request_views
from controlplane.policies import views as policy_views
from controlplane.webhooks import views as webhook_views

POLICY = "e/<str:environment>/<str:kind>/<str:name>/"
WEBHOOK = "e/<str:environment>/webhooks/<str:webhook>/"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics, name="metrics"),
    path("", live_views.home, name="home"),
    path("policies/", policy_views.dashboard, name="dashboard"),
    path("environments/new/", policy_views.environment_create, name="environment-create"),
    path(
        "e/<str:environment>/export.<str:fmt>",
        policy_views.environment_export,
        name="environment-export",
    ),
    path("e/<str:environment>/live/", live_views.live_overview, name="live-overview"),
    path(
        "e/<str:environment>/live/sparklines.json",
        live_views.sparklines,
        name="live-sparklines",
    ),
    path("e/<str:environment>/instances/", live_views.instances, name="live-instances"),
    path(
        "e/<str:environment>/revisions/<int:revision>/rollout/",
        rollout.rollout_status,
        name="live-rollout",
    ),
    path("e/<str:environment>/discovered/", live_views.discovered, name="live-discovered"),
    path(
        "e/<str:environment>/discovered/<int:discovered_id>/adopt/",
        live_views.adopt,
        name="live-adopt",
    ),
    path("e/<str:environment>/override/", live_views.override, name="live-override"),
    path(
        "e/<str:environment>/breaker/<str:name>/events/",
        live_views.breaker_events,
        name="live-breaker-events",
    ),
    path(
        "e/<str:environment>/settings/",
        environment_views.environment_settings,
        name="environment-settings",
    ),
    path("e/<str:environment>/webhooks/", webhook_views.webhook_list, name="webhook-list"),
    path(WEBHOOK, webhook_views.webhook_deliveries, name="webhook-deliveries"),
    path(WEBHOOK + "remove/", webhook_views.webhook_remove, name="webhook-remove"),
    path(WEBHOOK + "enabled/", webhook_views.webhook_enabled, name="webhook-enabled"),
    path(WEBHOOK + "test/", webhook_views.webhook_test, name="webhook-test"),
    path(
        WEBHOOK + "deliveries/<int:delivery_id>/redeliver/",
        webhook_views.webhook_redeliver,
        name="webhook-redeliver",
    ),
    path("e/<str:environment>/alerts/", alert_views.rule_list, name="alert-list"),
    path(
        "e/<str:environment>/alerts/<int:rule_id>/remove/",
        alert_views.rule_remove,
        name="alert-remove",
    ),
    path(
        "e/<str:environment>/alerts/<int:rule_id>/enabled/",
        alert_views.rule_enabled,
        name="alert-enabled",
    ),
    path("e/<str:environment>/import/", policy_views.environment_import, name="environment-import"),
    path("e/<str:environment>/<str:kind>/new/", policy_views.policy_create, name="policy-create"),
    path(POLICY, policy_views.policy_detail, name="policy-detail"),
    path(POLICY + "edit/", policy_views.policy_edit, name="policy-edit"),
    path(POLICY + "delete/", policy_views.policy_delete, name="policy-delete"),
    path(POLICY + "series.json", live_views.series, name="live-series"),
    path(POLICY + "compare/", policy_views.policy_compare, name="policy-compare"),
    path(
        POLICY + "versions/<int:version>/restore/",
        policy_views.policy_restore,
        name="policy-restore",
    ),
    path("requests/", request_views.request_queue, name="request-queue"),
    path("requests/<int:request_id>/", request_views.request_detail, name="request-detail"),
    path("requests/<int:request_id>/act/", request_views.request_act, name="request-act"),
    path("audit/", audit_views.audit_log, name="audit-log"),
    path("audit/export.<str:fmt>", audit_views.audit_export, name="audit-export"),
    path("tokens/", account_views.tokens, name="tokens"),
    path("tokens/<int:token_id>/revoke/", account_views.revoke_token, name="token-revoke"),
    path("users/", user_views.users, name="users"),
    path("users/new/", user_views.user_new, name="user-new"),
    path("users/invite/<uidb64>/<token>/", user_views.InviteView.as_view(), name="user-invite"),
    path("users/<str:username>/", user_views.user_detail, name="user-detail"),
    path("users/<str:username>/invite/", user_views.user_invite_again, name="user-invite-again"),
    path("users/<str:username>/deactivate/", user_views.user_deactivate, name="user-deactivate"),
    path("users/<str:username>/reactivate/", user_views.user_reactivate, name="user-reactivate"),
    path("api/v1/", api.urls),
    path("login/", LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # One way in: the admin's own login form would skip the login throttle.
    path("admin/login/", RedirectView.as_view(pattern_name="login", query_string=True)),
    path("admin/", admin.site.urls),
]
