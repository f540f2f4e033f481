"""
Settings for the servers of the tests of slow and silent clients.

The server settings, with the handshake timeout that the test sets in
``WEBSOCKET_TEST_HANDSHAKE_TIMEOUT``, so that the tests wait for it briefly.

"""

import os

from .settings_server import *

WEBSOCKET_HANDSHAKE_TIMEOUT = float(os.environ["WEBSOCKET_TEST_HANDSHAKE_TIMEOUT"])
