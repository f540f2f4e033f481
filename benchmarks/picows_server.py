"""
A picows echo server on uvloop: not a peer, but the fastest server at hand.

Measuring the load generator against it shows how much the client can do
(its ceiling): every peer must stay well below it for the figures to be the
servers' and not the client's.

"""

import argparse
import asyncio
import signal
import socket

from picows import WSListener, WSMsgType, ws_create_server

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None


class Echo(WSListener):
    def __init__(self):
        self.parts = []
        self.kind = None

    def on_ws_frame(self, transport, frame):
        kind = frame.msg_type
        if kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if frame.fin:
                transport.send(kind, frame.get_payload_as_memoryview())
            else:
                self.kind, self.parts = kind, [frame.get_payload_as_bytes()]
        elif kind is WSMsgType.CONTINUATION:
            self.parts.append(frame.get_payload_as_bytes())
            if frame.fin:
                transport.send(self.kind, b"".join(self.parts))
                self.parts = []


async def main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    server = await ws_create_server(lambda request: Echo(), sock=sock, max_frame_size=16 * 2**20)
    async with server:
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    fd = parser.parse_args().fd
    if uvloop is not None:
        uvloop.run(main(fd))
    else:
        asyncio.run(main(fd))
