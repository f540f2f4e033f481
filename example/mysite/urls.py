from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from echo import views
from mysite.views import signup

urlpatterns = [
    path("", views.index),
    path("ws/echo/", views.echo, name="echo"),
    path("", include("chat.urls")),
    path("", include("notifications.urls")),
    path("accounts/signup/", signup, name="signup"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]

# gunicorn serves no static files: with DEBUG on, Django does, as runserver would.
urlpatterns += staticfiles_urlpatterns()
