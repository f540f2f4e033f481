"""
What the notifications websocket carries, as JSON with a ``"type"``.

* ``{"type": "notification", "text": "..."}``: shown on every page the user
  has open, by :func:`notify`;
* ``{"type": "announcement", "text": "..."}``: the same, for everyone, from
  ``manage.py announce``.

When the browser's session logs out in one tab, django_websocket closes the
websockets of that session with 1008 ``"logged out"``, and the other tabs
reload (see ``notifications.js``).

"""

import json

from django_websocket import send_to_user


def notify(user, text):
    """
    Show ``text`` on every page that ``user`` has open, in every browser.

    ``user`` is a user or its primary key.

    Raises:
        BroadcastError: Redis cannot be reached; the user misses it.

    """
    send_to_user(user, json.dumps({"type": "notification", "text": text}))
