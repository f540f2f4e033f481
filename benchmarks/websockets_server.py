"""
The ``websockets`` package's own asyncio echo server, on a socket inherited as ``--fd``.

Its defaults are kept (asyncio's default event loop, 1 MiB max_size), as in
websockets' documentation.

"""

import argparse
import asyncio
import signal
import socket

from websockets.asyncio.server import serve


async def echo(websocket):
    async for message in websocket:  # str for text, bytes for binary
        await websocket.send(message)


async def main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with serve(echo, sock=sock):
        await stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fd", type=int, required=True)
    asyncio.run(main(parser.parse_args().fd))
