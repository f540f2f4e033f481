"""The Origin check through WebSocketMiddleware, with origins no browser sends."""

import logging

import pytest
from django.test import override_settings

from .utils import get_response, upgrade_request


@pytest.mark.parametrize("origin", ["http://[", "http://[evil]", "https://[::1", "http://a]b"])
def test_malformed_origin_gets_403(pairs, caplog, origin):
    request, websocket, client = upgrade_request(pairs, "/plain/", origin=origin)
    with caplog.at_level(logging.DEBUG), override_settings(WEBSOCKET_ACCEPT_ALL=True):
        response = get_response(request, urlconf="tests.test_middleware")
    assert response.status_code == 403
    assert response.content == (
        f"WebSocket connections from the origin {origin} are not allowed.".encode()
    )
    assert websocket.state == "CONNECTING"
    client.assert_nothing_sent(pairs.server_socket(websocket))
    assert [record for record in caplog.records if record.levelno >= logging.ERROR] == []
