from django.urls import path

from . import views

app_name = "chat"

urlpatterns = [
    path("chat/", views.rooms, name="rooms"),
    path("chat/<slug:name>/", views.room_page, name="room"),
    path("ws/chat/<slug:name>/", views.room, name="socket"),
    path("ws/moderated/<slug:name>/", views.moderated_room, name="moderated_socket"),
]
