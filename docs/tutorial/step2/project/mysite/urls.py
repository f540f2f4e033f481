from django.urls import include, path

from echo import views

urlpatterns = [
    path("", views.index),
    path("ws/echo/", views.echo),
    path("", include(("chat.urls", "chat"))),
]
