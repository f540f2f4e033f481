"""
A real Redis Cluster for the tests: masters with replicas on free ports.

Made the way an operator makes one, but with redis-py instead of
``redis-cli --cluster create``: the nodes meet, the masters take the slots
in equal ranges, each replica follows a master. Sharded pub/sub needs Redis
7 (Debian's ``redis-server``); without it, :func:`redis7_binary` returns
:obj:`None` and the tests that need a cluster skip, or fail under CI.

"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from . import servers
from .servers import TIMEOUT, poll

SLOTS = 16384


def redis7_binary() -> str | None:
    """Return the ``redis-server`` the tests run if it is Redis 7 or later, else None."""
    binary = servers.redis_server_binary()
    if binary is None:
        return None
    version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\d+)\.", version)
    return binary if match and int(match.group(1)) >= 7 else None


def require_redis7() -> None:
    """Skip the test without Redis 7; under CI, fail: .ci/run installs it."""
    if redis7_binary() is None:
        message = "sharded pub/sub needs redis-server 7 or later (apt install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class Cluster:
    """
    ``masters`` masters with ``replicas`` replicas each, ``node_timeout`` ms to notice a failure.

    :attr:`nodes` lists the masters first, then the replicas, in the order
    they follow the masters. :meth:`stop` stops them all.

    """

    def __init__(
        self, directory: Path, masters: int = 3, replicas: int = 1, node_timeout: int = 2000
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.nodes: list[servers.Server] = []
        self.hung: set[int] = set()  # the ports of the nodes hung on purpose
        self._starts: list[tuple[Path, tuple[str, ...]]] = []  # to start a node again
        buses = []  # each node's cluster bus port, which MEET must name
        try:
            for index in range(masters * (1 + replicas)):
                buses.append(servers.free_port())
                start = (directory / f"node-{index}.log", (
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{index}.conf",
                    "--cluster-node-timeout", str(node_timeout),
                    "--cluster-port", str(buses[-1]),
                ))
                self._starts.append(start)
                self.nodes.append(servers.start_redis(start[0], *start[1]))
            self._form(masters, buses)
        except BaseException:
            self.stop()
            raise

    def _form(self, masters: int, buses: list[int]) -> None:
        clients = [self.client(node) for node in self.nodes]
        try:
            ids = [client.execute_command("CLUSTER MYID").decode() for client in clients]
            for node, bus in zip(self.nodes[1:], buses[1:]):
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port, bus)
            share = SLOTS // masters
            for index, client in enumerate(clients[:masters]):
                last = SLOTS - 1 if index == masters - 1 else (index + 1) * share - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", index * share, last)
            # A replica can follow a master once it knows it.
            assert poll(lambda: all(_knows(client, ids) for client in clients), 4 * TIMEOUT), (
                "the nodes did not meet"
            )
            for index, client in enumerate(clients[masters:]):
                client.execute_command("CLUSTER REPLICATE", ids[index % masters])
            assert poll(lambda: all(_ok(client) for client in clients), 6 * TIMEOUT), (
                "the cluster did not come up"
            )
            assert poll(lambda: all(_linked(client) for client in clients[masters:]),
                        4 * TIMEOUT), "a replica did not sync with its master"
        finally:
            for client in clients:
                client.close()

    @staticmethod
    def client(node: servers.Server) -> redis.Redis:
        """A plain client of one node."""
        return redis.Redis(port=node.port, socket_timeout=TIMEOUT)

    def location(self, count: int = 3) -> str:
        """The site's ``LOCATION``, listing the first ``count`` nodes (the masters first)."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:count])
        return f"redis+cluster://{hosts}"

    def kill(self, node: servers.Server) -> None:
        """Kill ``node`` at once, as a crash does (no shutdown, no goodbye to the others)."""
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(TIMEOUT)

    def hang(self, node: servers.Server) -> None:
        """Stop ``node`` without closing anything, as a hung machine does: it answers nothing."""
        node.process.send_signal(signal.SIGSTOP)
        self.hung.add(node.port)

    def restart(self, node: servers.Server) -> None:
        """Start a stopped ``node`` again on its port; it rejoins from its configuration file."""
        index = self.nodes.index(node)
        log, args = self._starts[index]
        self.nodes[index] = servers.start_redis(log, *args, port=node.port)

    def masters(self) -> set[int]:
        """The ports of the nodes that are masters with slots now, as a live node sees it."""
        for node in self.nodes:
            if node.process.poll() is not None or node.port in self.hung:
                continue
            client = self.client(node)
            try:
                shards = client.execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            finally:
                client.close()
            return {int(shard[2][1]) for shard in shards}
        return set()

    def owner(self, key: str) -> int:
        """The port of the master that owns ``key``'s slot now."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if node.process.poll() is not None or node.port in self.hung:
                continue
            client = self.client(node)
            try:
                for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return int(primary[1])
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise AssertionError(f"no live node knows who owns {key!r}")

    def move_slot(self, key: str, port: int) -> None:
        """Move ``key``'s slot, and its keys, to the master at ``port``, as resharding does."""
        slot = key_slot(key.encode())
        source = self.client(self.node(self.owner(key)))
        target = self.client(self.node(port))
        try:
            source_id = source.execute_command("CLUSTER MYID").decode()
            target_id = target.execute_command("CLUSTER MYID").decode()
            target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                source.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)
            for client in (target, source):
                client.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        finally:
            source.close()
            target.close()
        assert poll(lambda: self.owner(key) == port), "the slot did not move"

    def node(self, port: int) -> servers.Server:
        return next(node for node in self.nodes if node.port == port)

    def healthy(self) -> bool:
        """Tell whether every live node says the cluster is ok."""
        return all(
            _ok(self.client(node)) for node in self.nodes
            if node.process.poll() is None and node.port not in self.hung
        )

    def stop(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)  # a hung node, to stop it
            node.stop()


def _knows(client: redis.Redis, ids: list[str]) -> bool:
    nodes = client.execute_command("CLUSTER NODES")  # parsed: {"host:port@bus": {...}}
    known = {node["node_id"] for node in nodes.values() if "handshake" not in node["flags"]}
    return known >= set(ids)


def _ok(client: redis.Redis) -> bool:
    try:
        return client.execute_command("CLUSTER INFO")["cluster_state"] == "ok"
    except redis.RedisError:
        return False
    finally:
        client.close()


def _linked(client: redis.Redis) -> bool:
    return client.info("replication").get("master_link_status") == "up"
