from django.urls import path

from . import views

urlpatterns = [path("ws/echo/", views.echo)]
