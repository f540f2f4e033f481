from django.urls import path

from django_websocket.metrics import metrics_view

from . import views

urlpatterns = [
    path("echo/", views.echo),
    path("accept/", views.accept),
    path("plain/", views.plain),
    path("chat/", views.chat),
    path("login-required/", views.login_required_echo),
    path("database-connection/", views.database_connection),
    path("refuse/", views.refuse),
    path("fail/", views.fail),
    path("fail-before-accepting/", views.fail_before_accepting),
    path("queue/", views.queue),
    path("close/", views.close),
    path("greenlet-send/", views.greenlet_send),
    path("whoami/", views.whoami),
    path("login/", views.login),
    path("finished/", views.finished),
    path("finished-status/", views.finished_status),
    path("sleep/", views.sleep),
    path("flood/", views.flood),
    path("shutdown/", views.shutdown),
    path("refuse-with-cookie/", views.refuse_with_cookie),
    path("count-users/", views.count_users),
    path("server-close/", views.server_close),
    path("frozen-objects/", views.frozen_objects),
    path("body-length/", views.body_length),
    path("accept-later/", views.accept_later),
    path("metrics/", metrics_view),
    path("pid/", views.pid),
    path("resume/", views.resume),
]
