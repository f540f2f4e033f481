from django.urls import path

from . import views

urlpatterns = [path("ws/member/", views.member)]
