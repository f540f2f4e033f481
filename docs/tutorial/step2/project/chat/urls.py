from django.urls import path

from . import views

urlpatterns = [
    path("chat/", views.index, name="index"),
    path("chat/<slug:room_name>/", views.room, name="room"),
    path("ws/chat/<slug:room_name>/", views.room_socket, name="room_socket"),
]
