"""
Template tags for websockets: ``{% load websocket %}``.

``{% websocket_url "chat:socket" room.name %}`` gives the absolute URL of a
websocket view, ``ws://`` or ``wss://`` by the request's scheme, for the
JavaScript client or any other. The client's script is a static file::

    <script src="{% static 'django_websocket/websocket.js' %}"></script>

"""

from __future__ import annotations

from typing import Any

from django import template
from django.core.exceptions import ImproperlyConfigured
from django.urls import reverse

__all__ = ["websocket_url"]

register = template.Library()


@register.simple_tag(takes_context=True)
def websocket_url(context: template.Context, view_name: str, *args: Any, **kwargs: Any) -> str:
    """
    Return the absolute websocket URL of ``view_name``, reversed with ``args`` or ``kwargs``.

    The scheme is ``wss://`` when the request is secure (see
    :meth:`~django.http.HttpRequest.is_secure`), ``ws://`` otherwise; the
    host is the request's (:meth:`~django.http.HttpRequest.get_host`).
    Like ``{% url %}``, ``{% websocket_url ... as var %}`` stores it in
    ``var`` instead.

    Raises:
        ImproperlyConfigured: the context has no ``request``.
        NoReverseMatch: ``view_name`` with these arguments matches no URL.

    """
    request = context.get("request")
    if request is None:
        raise ImproperlyConfigured(
            "{% websocket_url %} needs the request in the template's context: add "
            "'django.template.context_processors.request' to the 'context_processors' "
            "in the OPTIONS of TEMPLATES, and render with a request (render() does)."
        )
    path = reverse(view_name, args=args, kwargs=kwargs)
    scheme = "wss" if request.is_secure() else "ws"
    return f"{scheme}://{request.get_host()}{path}"
