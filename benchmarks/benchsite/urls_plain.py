from django.urls import path

from . import views_plain

urlpatterns = [path("ws/echo/", views_plain.echo)]
