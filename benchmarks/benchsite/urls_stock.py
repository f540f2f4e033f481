from django.urls import path

from . import views_stock

urlpatterns = [path("ws/echo/", views_stock.echo)]
