"""Views the tests of sessions that end (``test_sessions.py``, ``test_redis_sessions.py``) call."""

from django.contrib.auth import SESSION_KEY, get_user_model, logout, update_session_auth_hash
from django.contrib.sessions.models import Session
from django.http import HttpResponse

from django_websocket import close_group, disconnect_user


def logout_view(request):
    logout(request)
    return HttpResponse("logged out")


def change_password(request):
    """Change the password; with ``?keep=1``, keep the session as PasswordChangeView does."""
    user = request.user
    user.set_password(request.GET["password"])
    user.save()
    if request.GET.get("keep"):
        update_session_auth_hash(request, user)
    return HttpResponse("changed")


def deactivate(request):
    user = get_user_model().objects.get(username=request.GET["username"])
    user.is_active = False
    user.save()
    return HttpResponse("deactivated")


def flush(request):
    request.session.flush()
    return HttpResponse("flushed")


def delete_sessions(request):
    """Delete every session of ``?username=`` with a queryset, as a cleanup job would."""
    pk = str(get_user_model().objects.get(username=request.GET["username"]).pk)
    keys = [s.session_key for s in Session.objects.all() if s.get_decoded().get(SESSION_KEY) == pk]
    Session.objects.filter(session_key__in=keys).delete()
    return HttpResponse(f"deleted {len(keys)}")


def disconnect_user_view(request):
    user = get_user_model().objects.get(username=request.GET["username"])
    disconnect_user(user, reason=request.GET.get("reason", "disconnected"))
    return HttpResponse("disconnected")


def close_group_view(request):
    code = int(request.GET.get("code", 1008))
    close_group(request.GET["group"], code, request.GET.get("reason", ""))
    return HttpResponse("closed")
