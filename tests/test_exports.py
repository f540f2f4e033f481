"""The public names: what the package and each of its modules export."""

import importlib
import inspect
import pkgutil

import pytest

import django_websocket
from django_websocket import exceptions

# Modules Django or gunicorn load by convention rather than by name.
CONVENTIONAL = {"django_websocket.apps", "django_websocket.templatetags"}


def submodules():
    names = []
    for info in pkgutil.walk_packages(django_websocket.__path__, "django_websocket."):
        if ".management" in info.name or info.name in CONVENTIONAL:
            continue
        names.append(info.name)
    return sorted(names)


SUBMODULES = submodules()


def test_submodules_found():
    for name in [
        "decorators", "exceptions", "handshake", "middleware", "protocol", "websocket",
        "broadcast", "broadcast.base", "broadcast.locmem", "broadcast.redis",
    ]:
        assert f"django_websocket.{name}" in SUBMODULES


def test_top_level_exports():
    assert sorted(django_websocket.__all__) == sorted(
        [
            "accept_websocket",
            "require_websocket",
            "WebSocket",
            "WebSocketError",
            "ConnectionClosed",
            "InvalidHandshake",
            "InvalidState",
            "ProtocolError",
            "BroadcastError",
            "publish",
            "send_to_user",
            "broadcast",
            "close_group",
            "disconnect_user",
            "GroupMessage",
            "history",
            "History",
            "Position",
            "presence",
            "Presence",
        ]
    )
    assert len(set(django_websocket.__all__)) == len(django_websocket.__all__)


def test_version():
    assert isinstance(django_websocket.__version__, str)
    assert django_websocket.__version__.count(".") >= 1


@pytest.mark.parametrize("name", django_websocket.__all__)
def test_top_level_names_exist_and_come_from_a_submodule(name):
    value = getattr(django_websocket, name)
    homes = [
        module
        for module in map(importlib.import_module, SUBMODULES)
        if name in module.__all__ and getattr(module, name) is value
    ]
    assert homes, f"{name} is not exported by any submodule"


def test_top_level_reexports_every_exception():
    classes = [
        name
        for name in exceptions.__all__
        if inspect.isclass(getattr(exceptions, name))
        and issubclass(getattr(exceptions, name), BaseException)
    ]
    assert set(classes) <= set(django_websocket.__all__)


def test_top_level_reexports_the_decorators_and_websocket():
    from django_websocket import decorators, websocket

    assert set(decorators.__all__) <= set(django_websocket.__all__)
    assert "WebSocket" in websocket.__all__


@pytest.mark.parametrize("module_name", SUBMODULES)
def test_submodule_all(module_name):
    module = importlib.import_module(module_name)
    assert hasattr(module, "__all__"), f"{module_name} has no __all__"
    assert len(set(module.__all__)) == len(module.__all__), "duplicates"
    for name in module.__all__:
        assert hasattr(module, name), f"{module_name}.__all__ names {name}, which does not exist"
        assert not name.startswith("_")


def test_broadcast_is_the_function_whatever_is_imported_first():
    # The function and the subpackage that defines it share a name.
    import django_websocket.broadcast.locmem  # noqa: F401
    from django_websocket import broadcast
    from django_websocket.broadcast import base

    assert callable(broadcast) and broadcast.__name__ == "broadcast"
    assert django_websocket.broadcast is broadcast
    assert base.BROADCAST_GROUP.startswith(base.RESERVED_PREFIX)


def test_star_import():
    namespace = {}
    exec("from django_websocket import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(django_websocket.__all__)
