from django.urls import path

from . import views

app_name = "notifications"

urlpatterns = [
    path("notifications/", views.index, name="index"),
    path("notifications/job/", views.start_job, name="job"),
    path("ws/notifications/", views.socket, name="socket"),
]
