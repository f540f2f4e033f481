from django.contrib import admin
from django.urls import path

from echo import views

urlpatterns = [
    path("", views.index),
    path("ws/echo/", views.echo),
    path("admin/", admin.site.urls),
]
