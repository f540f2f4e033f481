"""
Which groups keep history, and how much: :data:`WEBSOCKET_HISTORY`.

The setting maps group name patterns, in the shell-style syntax of
:mod:`fnmatch` (``*``, ``?``, ``[seq]``, case-sensitive), to a size and a
time to live; the first pattern that matches a group decides.

"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

from django.core.signals import setting_changed

from ..conf import settings

__all__ = ["HistoryPolicy", "GroupPatterns", "policy_for"]

_Value = TypeVar("_Value")


class HistoryPolicy(NamedTuple):
    """How much history a group keeps."""

    #: Messages kept at most: the last ones.
    size: int
    #: Seconds a message is kept at most.
    ttl: float


class GroupPatterns(Generic[_Value]):
    """
    A setting of group name patterns (fnmatch syntax), read on first use.

    :meth:`match` returns the value of the first pattern that matches a
    group. Answers are cached until the setting changes; group names are
    many (one per user, per room), so the cache is emptied at
    :attr:`MAX_CACHED` names.

    """

    MAX_CACHED = 10_000

    def __init__(self, setting: str, load: Callable[[], dict[str, _Value]]) -> None:
        self.setting = setting
        self.load = load
        self._rules: list[tuple[re.Pattern[str], _Value]] | None = None
        self._cache: dict[str, _Value | None] = {}
        setting_changed.connect(self._reset)

    def match(self, group: str) -> _Value | None:
        """
        Return the value of the first pattern that matches ``group``, or :obj:`None`.

        Raises:
            ImproperlyConfigured: the setting is wrong.

        """
        cache = self._cache
        try:
            return cache[group]
        except KeyError:
            pass
        rules = self._rules
        if rules is None:
            rules = self._rules = [
                (re.compile(fnmatch.translate(pattern)), value)
                for pattern, value in self.load().items()
            ]
        found = next((value for pattern, value in rules if pattern.match(group)), None)
        if len(cache) >= self.MAX_CACHED:
            cache.clear()
        cache[group] = found
        return found

    def _reset(self, *, setting: str, **kwargs: object) -> None:
        if setting == self.setting:
            self._rules = None
            self._cache.clear()


_policies = GroupPatterns(
    "WEBSOCKET_HISTORY",
    lambda: {
        pattern: HistoryPolicy(config["SIZE"], config["TTL"])
        for pattern, config in settings.HISTORY.items()
    },
)


def policy_for(group: str) -> HistoryPolicy | None:
    """
    Return the history that ``group`` keeps, or :obj:`None` if it keeps none.

    Raises:
        ImproperlyConfigured: :data:`WEBSOCKET_HISTORY` is wrong.

    """
    return _policies.match(group)
