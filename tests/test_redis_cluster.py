"""
Sharded pub/sub on a real Redis Cluster: three masters with a replica each (tests/cluster.py).

Two gunicorn instances, one worker each, stand for two machines. Each
websocket joins a group on every master. Messages are published from this
process, from the views, and from new processes; a master is killed while
messages flow.

"""

import json
import logging
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager

import pytest
import redis
from django.test import override_settings

from django_websocket import BroadcastError, history, presence, publish
from django_websocket.broadcast.presence import PresenceEntry, event

from . import servers
from .cluster import Cluster, require_redis7
from .servers import TIMEOUT, poll
from .utils import command, expect, group_name, http_publish, listen

REDIS = "django_websocket.broadcast.redis.RedisBackend"
PREFIX = "tests:"  # as tests/settings_broadcast.py
HISTORY = {"kept-*": {"SIZE": 100, "TTL": 60}}

# The bound docs/deployment.rst states for a failover: with
# cluster-node-timeout 2 s, a replica takes over about 3 s after its master
# dies, then every process subscribes to it within REROUTE_INTERVAL (1 s).
# A master that hangs is noticed within HEALTH_CHECK_INTERVAL more (2 s in
# this test).
FAILOVER_BOUND = 10.0
HEALTH_CHECK_INTERVAL = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_redis7()
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


def env(cluster: Cluster, **extra: str) -> dict:
    return servers.server_env(**{
        "DJANGO_SETTINGS_MODULE": "tests.settings_broadcast",
        "WEBSOCKET_TEST_REDIS_URL": cluster.location(),
        "WEBSOCKET_TEST_HISTORY": json.dumps(HISTORY),
        **extra,
    })


@contextmanager
def publishing_to(cluster: Cluster, **options):
    """Make this process publish through ``cluster``."""
    config = {"BACKEND": REDIS, "LOCATION": cluster.location(),
              "OPTIONS": {"PREFIX": PREFIX, **options}}
    with override_settings(WEBSOCKET_BROADCAST=config, WEBSOCKET_HISTORY=HISTORY):
        yield


def one_group_per_master(cluster: Cluster, stem: str = "group") -> list[str]:
    """Return a new group name on each master, in the order of ``cluster.nodes``."""
    found: dict[int, str] = {}
    masters = cluster.masters()
    while len(found) < len(masters):
        group = f"{stem}-{group_name()}"
        found.setdefault(cluster.owner(PREFIX + group), group)
    return [found[node.port] for node in cluster.nodes if node.port in found]


def listening(cluster: Cluster, group: str, workers: int) -> None:
    """
    Wait until ``workers`` processes have subscribed to ``group`` on its master.

    A view waits a second at most for its subscription: on a busy machine,
    it may still be on its way when the view says it subscribed.

    """
    channel = PREFIX + group
    assert poll(lambda: shard_subscribers(cluster, cluster.owner(channel), channel) == workers)


def shard_subscribers(cluster: Cluster, port: int, channel: str) -> int:
    client = cluster.client(cluster.node(port))
    try:
        ((_, count),) = client.pubsub_shardnumsub(channel)
        return int(count)
    finally:
        client.close()


def classic_subscribers(cluster: Cluster, channel: str) -> int:
    """The subscribers to ``channel`` through classic pub/sub, on all nodes."""
    count = 0
    for node in cluster.nodes:
        client = cluster.client(node)
        try:
            ((_, subscribers),) = client.pubsub_numsub(channel)
            count += int(subscribers)
        finally:
            client.close()
    return count


@pytest.fixture(scope="module")
def machines(cluster, tmp_path_factory):
    directory = tmp_path_factory.mktemp("machines")
    with ExitStack() as stack:
        a = servers.start_gunicorn(directory / "a.log", env=env(cluster))
        stack.callback(a.stop)
        b = servers.start_gunicorn(directory / "b.log", env=env(cluster))
        stack.callback(b.stop)
        yield a, b


def test_each_group_lives_on_its_own_master(cluster, machines):
    groups = one_group_per_master(cluster)
    with ExitStack() as stack:
        websockets = [listen(stack, server, *groups)[0] for server in machines]
        for group in groups:
            channel = PREFIX + group
            owner = cluster.owner(channel)
            # Both workers listen on the group's master, and only there.
            # (A view waits a second at most for its subscription: on a
            # busy machine, it may still be on its way.)
            def counts():
                return {node: shard_subscribers(cluster, node, channel)
                        for node in cluster.masters()}

            expected = {node: 2 if node == owner else 0 for node in cluster.masters()}
            assert poll(lambda: counts() == expected), counts()
        with publishing_to(cluster):
            for group in groups:
                publish(group, f"to {group}")
        for group in groups:
            assert http_publish(machines[0], group, f"from a view to {group}").status == 200
        expect(websockets, *[f"to {group}" for group in groups])
        expect(websockets, *[f"from a view to {group}" for group in groups])
        # Nothing goes through classic pub/sub, which every node would copy.
        assert all(classic_subscribers(cluster, PREFIX + group) == 0 for group in groups)


def test_a_view_that_publishes_gets_its_own_message_once(cluster, machines):
    group = one_group_per_master(cluster)[1]
    with ExitStack() as stack:
        websocket, _ = listen(stack, machines[0], group)
        other, _ = listen(stack, machines[1], group)
        listening(cluster, group, 2)
        websocket.send(f"publish {group} hello")
        assert {websocket.recv(TIMEOUT), websocket.recv(TIMEOUT)} == {
            f"ok publish {group} hello", "hello"
        }
        expect([other], "hello")
        # The echo through Redis was skipped: the next thing is the next message.
        http_publish(machines[1], group, "next")
        expect([websocket, other], "next")


def subscriber_ids(cluster: Cluster, port: int) -> set[str]:
    """The ids of the connections to the node that have a shard channel subscribed."""
    client = cluster.client(cluster.node(port))
    try:
        return {entry["id"] for entry in client.client_list() if int(entry.get("ssub", 0)) > 0}
    finally:
        client.close()


def connection_ids(cluster: Cluster, port: int) -> set[str]:
    client = cluster.client(cluster.node(port))
    try:
        return {entry["id"] for entry in client.client_list()}
    finally:
        client.close()


def test_a_worker_connects_only_to_the_masters_of_its_groups(cluster, tmp_path):
    groups = one_group_per_master(cluster)
    ports = [node.port for node in cluster.nodes[:3]]
    # Every websocket is in the group of broadcast(): its master has one too.
    always = cluster.owner(PREFIX + "django_websocket.broadcast")

    def subscribed():
        return [len(subscriber_ids(cluster, port)) for port in ports]

    def expected(*joined):
        owners = {cluster.owner(PREFIX + group) for group in joined} | {always}
        return [int(port in owners) for port in ports]

    # The other tests' websockets are gone.
    assert poll(lambda: subscribed() == [0, 0, 0]), subscribed()
    server = servers.start_gunicorn(tmp_path / "server.log", env=env(cluster))
    try:
        with ExitStack() as stack:
            websocket, _ = listen(stack, server, groups[0])
            assert poll(lambda: subscribed() == expected(groups[0])), subscribed()
            for group in groups[1:]:
                command(websocket, f"subscribe {group}")
            assert poll(lambda: subscribed() == [1, 1, 1]), subscribed()
            # A node with no group left is let go of.
            leaving = next(group for group in groups if cluster.owner(PREFIX + group) != always)
            port = cluster.owner(PREFIX + leaving)
            (shard,) = subscriber_ids(cluster, port)
            command(websocket, f"unsubscribe {leaving}")
            assert poll(lambda: shard not in connection_ids(cluster, port)), (
                "the worker kept its connection to a master without its groups"
            )
            staying = [group for group in groups if group != leaving]
            assert subscribed() == expected(*staying)
            for group in staying:
                http_publish(server, group, f"still in {group}")
            expect([websocket], *[f"still in {group}" for group in staying])
    finally:
        server.stop()


def test_a_shard_reconnects_however_often_its_connection_is_cut(cluster, machines):
    # redis-py's pools count every connection they make; 8.x stops at 100.
    group = one_group_per_master(cluster)[1]
    port = cluster.owner(PREFIX + group)
    with ExitStack() as stack:
        websocket, _ = listen(stack, machines[0], group)
        client = cluster.client(cluster.node(port))
        try:
            for _ in range(110):
                assert poll(lambda: subscriber_ids(cluster, port)), "the shard did not come back"
                client.execute_command("CLIENT KILL", "TYPE", "pubsub")
        finally:
            client.close()
        assert poll(lambda: subscriber_ids(cluster, port)), "the shard did not come back"
        http_publish(machines[1], group, "still here")
        expect([websocket], "still here")


def test_history_and_resuming_through_sharded_channels(cluster, machines):
    group = one_group_per_master(cluster, "kept")[2]
    with publishing_to(cluster):
        positions = []
        for number in range(3):
            publish(group, f"kept {number}")
            positions.append(history(group).messages[-1].position)
        assert [m.message for m in history(group).messages] == ["kept 0", "kept 1", "kept 2"]
    query = f"group={group}&since={positions[0]}"
    with servers.connect(machines[1], f"/broadcast/positions/?{query}") as websocket:
        assert websocket.recv(TIMEOUT).startswith("resumed True ")
        assert websocket.recv(TIMEOUT) == f"{positions[1]} kept 1"
        assert websocket.recv(TIMEOUT) == f"{positions[2]} kept 2"
        http_publish(machines[0], group, "kept 3")
        epoch, offset = str(positions[2]).split(":")
        assert websocket.recv(TIMEOUT) == f"{epoch}:{int(offset) + 1} kept 3"


def test_a_group_follows_its_slot_to_another_master(cluster, machines):
    group = one_group_per_master(cluster, "kept")[0]
    old = cluster.owner(PREFIX + group)
    other = next(port for port in cluster.masters() if port != old)
    # A group that stays on the old master, on the same worker.
    neighbour = next(g for g in iter(group_name, None) if cluster.owner(PREFIX + g) == old)
    start = machines[0].log_bytes()
    with ExitStack() as stack:
        websocket, _ = listen(stack, machines[0], group, neighbour)
        listening(cluster, group, 1)
        listening(cluster, neighbour, 1)
        with publishing_to(cluster):
            publish(group, "before")
            expect([websocket], "before")
            epoch = history(group).position.epoch
            moved = time.monotonic()
            cluster.move_slot(PREFIX + group, other)
            # The old master dropped the channel; the worker subscribes on the new one.
            assert poll(lambda: shard_subscribers(cluster, other, PREFIX + group) == 1), (
                "the worker did not follow the slot"
            )
            print(f"subscribed on the new master after {time.monotonic() - moved:.2f} s")
            publish(group, "after")
            publish(neighbour, "next door")
            # Another server process numbers the group's messages now: a new
            # epoch, so that a position never names two messages.
            kept = history(group)
            assert [m.message for m in kept.messages] == ["after"]
            assert kept.position.epoch != epoch
        # Through two masters, in either order.
        assert {websocket.recv(TIMEOUT), websocket.recv(TIMEOUT)} == {"after", "next door"}
    # The worker kept its connection to the old master, for the neighbour.
    assert "lost the connection" not in machines[0].log(start)


def test_publishing_follows_a_slot_to_another_master(cluster, machines):
    # A group without history: publish() sends SPUBLISH straight to the
    # master it knows, which answers MOVED once the slot has moved.
    group = one_group_per_master(cluster)[2]
    old = cluster.owner(PREFIX + group)
    other = next(port for port in cluster.masters() if port != old)
    with ExitStack() as stack, publishing_to(cluster):
        websocket, _ = listen(stack, machines[0], group)
        listening(cluster, group, 1)
        publish(group, "before")
        expect([websocket], "before")
        cluster.move_slot(PREFIX + group, other)
        listening(cluster, group, 1)  # on the new master now
        for number in range(3):
            publish(group, f"after {number}")
        expect([websocket], "after 0", "after 1", "after 2")


def test_presence_and_its_events_across_the_cluster(cluster, tmp_path):
    rooms = {"room.*": {"EVENTS": True}}
    server = servers.start_gunicorn(
        tmp_path / "server.log",
        env=env(cluster, DJANGO_SETTINGS_MODULE="tests.settings_presence"),
    )
    try:
        with ExitStack() as stack, publishing_to(cluster), override_settings(
            WEBSOCKET_PRESENCE=rooms
        ):
            # A room on each master: the entries live in its slot.
            for group in one_group_per_master(cluster, "room.x"):
                watcher, _ = listen(stack, server, group)
                assert [p.connections for p in presence(group)] == [1]
                joiner, _ = listen(stack, server, group)
                assert [p.connections for p in presence(group)] == [2]
                joiner.close()
                assert poll(lambda: [p.connections for p in presence(group)] == [1])
                # The watcher hears of the join (its own too, depending on
                # timing: it joined before its handshake was accepted), then
                # of the leave.
                join, leave = (event(kind, group, PresenceEntry("", None, None))
                               for kind in ("join", "leave"))
                heard = [watcher.recv(TIMEOUT)]
                while heard[-1] == join and len(heard) < 3:
                    heard.append(watcher.recv(TIMEOUT))
                assert heard in ([join, leave], [join, join, leave]), heard
    finally:
        server.stop()


def test_classic_pubsub_still_works_on_a_cluster(cluster, tmp_path):
    # Redis 6 has no sharded pub/sub: SHARDED=False uses PUBLISH.
    group = one_group_per_master(cluster)[0]
    server = servers.start_gunicorn(
        tmp_path / "server.log", env=env(cluster, WEBSOCKET_TEST_REDIS_SHARDED="0")
    )
    try:
        with ExitStack() as stack:
            websocket, _ = listen(stack, server, group)
            assert poll(lambda: classic_subscribers(cluster, PREFIX + group) == 1)
            with publishing_to(cluster, SHARDED=False):
                publish(group, "classic")
            expect([websocket], "classic")
    finally:
        server.stop()


# A failover during traffic, on a cluster of its own.

PUBLISHER = """
import sys
import django
from django.conf import settings
settings.configure(
    INSTALLED_APPS=["django_websocket"],
    WEBSOCKET_BROADCAST={"BACKEND": %r, "LOCATION": sys.argv[1], "OPTIONS": {"PREFIX": %r}},
)
django.setup()
from django_websocket import publish
for group in sys.argv[2:]:
    publish(group, "from a new process")
"""


def publish_from_new_process(location: str, groups: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", PUBLISHER % (REDIS, PREFIX), location, *groups],
        capture_output=True, text=True, timeout=6 * TIMEOUT, env=servers.server_env(),
    )


class Publisher(threading.Thread):
    """Publish ``<group> <number>`` to each group every 50 ms; keep when each was sent."""

    def __init__(self, cluster: Cluster, groups: list[str]) -> None:
        super().__init__(daemon=True)
        self.cluster = cluster
        self.groups = groups
        self.sent: dict[str, float] = {}  # message -> when publish() returned
        self.failed: dict[str, list[float]] = {group: [] for group in groups}
        self.stopping = threading.Event()

    def run(self) -> None:
        with publishing_to(self.cluster):
            number = 0
            while not self.stopping.wait(0.05):
                for group in self.groups:
                    message = f"{group} {number}"
                    try:
                        publish(group, message)
                    except BroadcastError:
                        self.failed[group].append(time.monotonic())
                    else:
                        self.sent[message] = time.monotonic()
                number += 1


def received_until_quiet(websocket) -> list[str]:
    """Read what the websocket gets until it gets nothing for a while."""
    messages = []
    while True:
        try:
            messages.append(websocket.recv(TIMEOUT / 5))
        except TimeoutError:
            return messages


@pytest.mark.parametrize("failure", ["crash", "hang"])
def test_a_failover_heals_within_the_stated_bound(failure, tmp_path, caplog):
    require_redis7()
    bound = FAILOVER_BOUND + (HEALTH_CHECK_INTERVAL if failure == "hang" else 0)
    caplog.set_level(logging.WARNING, "django_websocket.broadcast.redis")
    cluster = Cluster(tmp_path / "cluster")
    try:
        groups = one_group_per_master(cluster)  # groups[0] on the master to die
        # The site lists the three masters, the one to die first.
        interval = str(HEALTH_CHECK_INTERVAL)
        server = servers.start_gunicorn(
            tmp_path / "server.log",
            env=env(cluster, WEBSOCKET_TEST_REDIS_HEALTH_CHECK_INTERVAL=interval),
        )
        publisher = Publisher(cluster, groups)
        try:
            with ExitStack() as stack:
                websocket, _ = listen(stack, server, *groups)
                publisher.start()
                assert poll(lambda: len(publisher.sent) >= 3 * len(groups))
                killed = time.monotonic()
                if failure == "crash":
                    cluster.kill(cluster.nodes[0])
                else:
                    cluster.hang(cluster.nodes[0])
                # The replica of the dead master takes over.
                assert poll(lambda: cluster.nodes[0].port not in cluster.masters(),
                            FAILOVER_BOUND), "no replica took over"
                # A new process publishes, though the first node it knows is dead.
                done = publish_from_new_process(cluster.location(), groups)
                assert done.returncode == 0, done.stderr
                # Publishing works again; so does this process's log.
                assert poll(lambda: "works again" in caplog.text, 4 * TIMEOUT)
                publisher.stopping.set()
                publisher.join(TIMEOUT)
                messages = received_until_quiet(websocket)
                # A worker started now subscribes, though the first node it
                # knows is dead.
                late = servers.start_gunicorn(
                    tmp_path / "late.log",
                    env=env(cluster, WEBSOCKET_TEST_REDIS_HEALTH_CHECK_INTERVAL=interval),
                )
                stack.callback(late.stop)
                newcomer, _ = listen(stack, late, groups[0])
                listening(cluster, groups[0], 2)
                publish_from_new_process(cluster.location(), [groups[0]])
                assert newcomer.recv(TIMEOUT) == "from a new process"
        finally:
            publisher.stopping.set()
            publisher.join(TIMEOUT)
            server.stop()
        delays = {}
        for group in groups:
            numbers = [int(m.split()[1]) for m in messages if m.startswith(f"{group} ")]
            after = [n for n in numbers if publisher.sent[f"{group} {n}"] > killed]
            assert after, f"{group} got nothing after the kill"
            # From the first message delivered after the kill on, every
            # message published is delivered once, in order.
            published = sorted(
                n for n in (int(m.split()[1]) for m in publisher.sent if m.startswith(f"{group} "))
                if n >= after[0]
            )
            assert after == published, group
            delays[group] = publisher.sent[f"{group} {after[0]}"] - killed
        rounded = {group: round(delay, 2) for group, delay in delays.items()}
        print(f"delivered again after the {failure}, s:", rounded)
        assert max(delays.values()) <= bound, delays
        # Publishing failed only while the cluster had no master for a slot
        # (the cluster refuses every group meanwhile), once per process in the log.
        for group in groups:
            failed = publisher.failed[group]
            assert not failed or failed[-1] - killed <= bound, group
        assert caplog.text.count("cannot publish to Redis") == 1, caplog.text
        log = server.log()
        assert f"moved from 127.0.0.1:{cluster.nodes[0].port}" in log
        # No greenlet of the backend failed.
        assert "starting it again" not in log and "cannot move the groups" not in log
    finally:
        cluster.stop()


def test_a_worker_started_while_the_cluster_is_down_subscribes_once_it_is_up(tmp_path):
    require_redis7()
    cluster = Cluster(tmp_path / "cluster", replicas=0)
    try:
        groups = one_group_per_master(cluster)
        for node in cluster.nodes:
            node.stop()
        server = servers.start_gunicorn(tmp_path / "server.log", env=env(cluster))
        try:
            with ExitStack() as stack:
                # Joining does not wait for a cluster that cannot answer.
                websocket, _ = listen(stack, server, *groups)
                for node in list(cluster.nodes):
                    cluster.restart(node)
                assert poll(cluster.healthy, 4 * TIMEOUT), "the cluster did not come back"
                with publishing_to(cluster):
                    # Until the worker finds each group's master, messages are lost.
                    def delivered(group):
                        publish(group, f"back in {group}")
                        try:
                            return websocket.recv(TIMEOUT / 10) == f"back in {group}"
                        except TimeoutError:
                            return False

                    for group in groups:
                        assert poll(lambda: delivered(group), 2 * TIMEOUT), group
        finally:
            server.stop()
        log = server.log()
        assert log.count("WARNING django_websocket.broadcast.redis: cannot learn the slots") == 1
        assert "learnt the slots of Redis Cluster at" in log
        assert "starting it again" not in log
    finally:
        cluster.stop()


def test_publish_names_the_setting_when_the_cluster_lacks_sharded_pubsub(tmp_path):
    # Redis 6 has no SPUBLISH: neither has a Redis 7 node that renamed it away.
    require_redis7()
    node = servers.start_redis(
        tmp_path / "node.log", "--cluster-enabled", "yes", "--rename-command", "SPUBLISH", ""
    )
    try:
        client = redis.Redis(port=node.port)
        client.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)
        assert poll(lambda: client.execute_command("CLUSTER INFO")["cluster_state"] == "ok")
        client.close()
        config = {"BACKEND": REDIS, "LOCATION": f"redis+cluster://127.0.0.1:{node.port}"}
        with override_settings(WEBSOCKET_BROADCAST=config):
            with pytest.raises(BroadcastError, match=r"\['SHARDED'\] to False"):
                publish("room", "hello")
            config["OPTIONS"] = {"SHARDED": False}
            with override_settings(WEBSOCKET_BROADCAST=config):
                publish("room", "hello")
    finally:
        node.stop()
