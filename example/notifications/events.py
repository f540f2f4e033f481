"""
What the notifications websocket carries, as JSON with a ``"type"``.

* ``{"type": "notification", "text": "..."}``: shown on every page the user
  has open, by :func:`notify`;
* ``{"type": "announcement", "text": "..."}``: the same, for everyone, from
  ``manage.py announce``;
* ``{"type": "logout"}``: the browser's session logged out in one tab, so
  the others reload (see :func:`session_group`).

"""

import hashlib
import json
import logging

from django_websocket import BroadcastError, publish, send_to_user

logger = logging.getLogger(__name__)


def notify(user, text):
    """
    Show ``text`` on every page that ``user`` has open, in every browser.

    ``user`` is a user or its primary key.

    Raises:
        BroadcastError: Redis cannot be reached; the user misses it.

    """
    send_to_user(user, json.dumps({"type": "notification", "text": text}))


def session_group(session_key):
    """
    The group of the notification websockets of one browser session.

    A user's group spans all the user's browsers; logging out ends one
    session only. The key is hashed: it is a secret, and group names
    travel through Redis.

    """
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def logged_out(sender, request, user, **kwargs):
    """Receive ``user_logged_out``: reload the other tabs of the session."""
    session_key = request.session.session_key  # before logout() flushes the session
    if session_key is None:
        return
    try:
        publish(session_group(session_key), json.dumps({"type": "logout"}))
    except BroadcastError:
        # Logging out must work without Redis; the tabs find out on their next request.
        logger.warning("Could not tell the other tabs about a logout", exc_info=True)
