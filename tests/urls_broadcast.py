from django.urls import path

from . import broadcast_views
from .urls import urlpatterns as base_urlpatterns

urlpatterns = [
    *base_urlpatterns,
    path("broadcast/listen/", broadcast_views.listen),
    path("broadcast/filtered/", broadcast_views.filtered),
    path("broadcast/slow-view/", broadcast_views.slow_view),
    path("broadcast/publish/", broadcast_views.publish_view),
    path("broadcast/send-to-user/", broadcast_views.send_to_user_view),
    path("broadcast/broadcast/", broadcast_views.broadcast_view),
    path("broadcast/pid/", broadcast_views.pid),
    path("broadcast/user-pk/", broadcast_views.user_pk),
]
