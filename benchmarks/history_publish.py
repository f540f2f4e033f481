"""publish() in a loop from a plain process, history off vs on, against a fresh Redis; memory per entry. Run from the repository root: python benchmarks/history_publish.py"""
import os, sys, time, pathlib, tempfile, tracemalloc
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django; django.setup()
from django.test import override_settings
from tests import servers
import redis
from django_websocket import publish
from django_websocket.broadcast.positions import MemoryHistory
d = pathlib.Path(tempfile.mkdtemp()); s = servers.start_redis(d / "r.log")
cfg = {"BACKEND": "django_websocket.broadcast.redis.RedisBackend", "LOCATION": f"redis://127.0.0.1:{s.port}/0"}
N = 20000
msgs = [f"{n:08}".ljust(32, "x") for n in range(N)]
res = {}
for rnd in range(3):
  for name, hist in (("off", {}), ("on", {"bench": {"SIZE": 1000, "TTL": 300}})):
    with override_settings(WEBSOCKET_BROADCAST=cfg, WEBSOCKET_HISTORY=hist):
        for m in msgs[:500]: publish("bench", m)
        t = time.perf_counter()
        for m in msgs: publish("bench", m)
        res.setdefault(name, []).append(N / (time.perf_counter() - t))
for k, v in res.items(): print(k, [round(x) for x in v], "best", round(max(v)))
r = redis.Redis(port=s.port)
r.flushall()
for n, size in ((1000, 1000),):
    before = r.info("memory")["used_memory"]
    with override_settings(WEBSOCKET_BROADCAST=cfg, WEBSOCKET_HISTORY={"g.*": {"SIZE": 1000, "TTL": 300}}):
        for g in range(20):
            for m in msgs[:1000]: publish(f"g.{g}", m)
    after = r.info("memory")["used_memory"]
    print("redis bytes per entry (32-byte message):", (after - before) / 20000)
print(r.info("commandstats").get("cmdstat_evalsha"), r.info("commandstats").get("cmdstat_publish"))
s.stop()
tracemalloc.start()
h = MemoryHistory()
a = tracemalloc.get_traced_memory()[0]
for g in range(20):
    for m in msgs[:1000]: h.append(f"g.{g}", m, 1000, 300)
print("locmem bytes per entry (32-char str message, not counting the message itself shared):", (tracemalloc.get_traced_memory()[0]-a)/20000)
