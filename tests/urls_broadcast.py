from django.urls import path

from . import broadcast_views, session_views
from .urls import urlpatterns as base_urlpatterns

urlpatterns = [
    *base_urlpatterns,
    path("broadcast/listen/", broadcast_views.listen),
    path("broadcast/filtered/", broadcast_views.filtered),
    path("broadcast/slow-view/", broadcast_views.slow_view),
    path("broadcast/resume/", broadcast_views.resume),
    path("broadcast/positions/", broadcast_views.positions),
    path("broadcast/publish/", broadcast_views.publish_view),
    path("broadcast/send-to-user/", broadcast_views.send_to_user_view),
    path("broadcast/broadcast/", broadcast_views.broadcast_view),
    path("broadcast/pid/", broadcast_views.pid),
    path("broadcast/user-pk/", broadcast_views.user_pk),
    path("sessions/logout/", session_views.logout_view),
    path("sessions/change-password/", session_views.change_password),
    path("sessions/deactivate/", session_views.deactivate),
    path("sessions/flush/", session_views.flush),
    path("sessions/delete/", session_views.delete_sessions),
    path("sessions/disconnect-user/", session_views.disconnect_user_view),
    path("sessions/close-group/", session_views.close_group_view),
]
