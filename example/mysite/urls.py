from django.contrib import admin
from django.urls import path

from chat import views as chat_views
from echo import views

urlpatterns = [
    path("", views.index),
    path("ws/echo/", views.echo),
    path("ws/chat/<slug:name>/", chat_views.room),
    path("ws/moderated/<slug:name>/", chat_views.moderated_room),
    path("admin/", admin.site.urls),
]
