from __future__ import annotations

from django.urls import path

from controlplane.live.consumers import LiveConsumer

websocket_urlpatterns = [
    path("ws/live/<str:environment>/", LiveConsumer.as_asgi()),
    path("ws/home/", LiveConsumer.as_asgi()),
]
