from __future__ import annotations

from django.urls import path

from bench.knox_peer.views import CurrentPerson

urlpatterns = [path("v4/people/current", CurrentPerson.as_view())]
