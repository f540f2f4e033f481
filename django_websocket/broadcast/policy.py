"""
Which groups keep history, and how much: :data:`WEBSOCKET_HISTORY`.

The setting maps group name patterns, in the shell-style syntax of
:mod:`fnmatch` (``*``, ``?``, ``[seq]``, case-sensitive), to a size and a
time to live; the first pattern that matches a group decides.

"""

from __future__ import annotations

import fnmatch
import re
from typing import NamedTuple

from django.core.signals import setting_changed

from ..conf import settings

__all__ = ["HistoryPolicy", "policy_for"]


class HistoryPolicy(NamedTuple):
    """How much history a group keeps."""

    #: Messages kept at most: the last ones.
    size: int
    #: Seconds a message is kept at most.
    ttl: float


# The patterns compiled, and the answer for the groups seen, until the
# setting changes. Group names are many (one per user, per room): the
# answers are forgotten when there are this many.
_MAX_CACHED = 10_000
_rules: list[tuple[re.Pattern[str], HistoryPolicy]] | None = None
_cache: dict[str, HistoryPolicy | None] = {}


def policy_for(group: str) -> HistoryPolicy | None:
    """
    Return the history that ``group`` keeps, or :obj:`None` if it keeps none.

    Raises:
        ImproperlyConfigured: :data:`WEBSOCKET_HISTORY` is wrong.

    """
    try:
        return _cache[group]
    except KeyError:
        pass
    global _rules
    rules = _rules
    if rules is None:
        rules = _rules = [
            (re.compile(fnmatch.translate(pattern)), HistoryPolicy(config["SIZE"], config["TTL"]))
            for pattern, config in settings.HISTORY.items()
        ]
    found = None
    for pattern, policy in rules:
        if pattern.match(group):
            found = policy
            break
    if len(_cache) >= _MAX_CACHED:
        _cache.clear()
    _cache[group] = found
    return found


def _reset(*, setting: str, **kwargs: object) -> None:
    global _rules
    if setting == "WEBSOCKET_HISTORY":
        _rules = None
        _cache.clear()


setting_changed.connect(_reset)
