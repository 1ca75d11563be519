"""Nexmark-style queries in Apache Spark Structured Streaming and in Weir,
side by side on the same files (`./dev bench`).

Events follow Nexmark's model (persons, auctions, bids: 1 : 3 : 46 of every
50 events, event time advancing 1 ms per event) as JSON-lines files, split
into as many files per stream; each engine drains them with an
available-now trigger, `FILES_PER_BATCH` files per micro-batch, and writes
JSON files. Measured: wall time from start to the last commit. Spark runs
`local[N]` with N shuffle partitions (not its default 200) and is timed on
its second run of each query (a warm JIT: the kindest measure for Spark);
Weir is timed as a whole `weir run` process, with 1 task and with N.
Both outputs are counted, and must agree, so the work compared is the same.

    q0  pass-through of bids
    q1  bids with the price in euros: a Wasm transform in Weir
    q5  bids per auction per 10 s sliding window (every 2 s)
    q7  highest bid per 10 s tumbling window: max per auction and window,
        then max per window (Weir: [aggregate.then])
    q8  new persons joined with the auctions they open within 10 s
"""

import argparse
import concurrent.futures
import glob
import json
import os
import random
import shutil
import subprocess
import sys
import time

FILES_PER_BATCH = 4
BASE_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def generate(directory, events, files, seed=7):
    """Writes persons/, auctions/ and bids/ under `directory`: `events`
    events in Nexmark's proportions, each stream in `files` files."""
    r = random.Random(seed)
    streams = {"persons": [], "auctions": [], "bids": []}
    persons, auctions = 0, 0
    for n in range(events):
        t = iso(BASE_MS + n)
        kind = n % 50
        if kind == 0:
            streams["persons"].append(
                {"p_id": persons, "name": f"person {persons}", "city": r.choice(["Oslo", "Lyon", "Turin"]),
                 "state": r.choice(["OR", "ID", "CA"]), "p_time": t})
            persons += 1
        elif kind <= 3:
            # Opened by a recent person, mostly one who joined in the last seconds.
            seller = max(0, persons - 1 - int(r.expovariate(1 / 3)))
            streams["auctions"].append(
                {"a_id": auctions, "item": f"item {auctions}", "seller": seller,
                 "category": r.randint(10, 14), "initial_bid": r.randint(1, 1000), "a_time": t})
            auctions += 1
        else:
            # Bids go to the auctions opened lately (hot items).
            auction = max(0, auctions - 1 - int(r.expovariate(1 / 20)))
            streams["bids"].append(
                {"auction": auction, "bidder": r.randint(0, max(persons, 1)), "price": r.randint(100, 100_000),
                 "channel": r.choice(["web", "app", "partner"]), "b_time": t})
    for name, rows in streams.items():
        os.makedirs(os.path.join(directory, name), exist_ok=True)
        per = -(-len(rows) // files)
        for f in range(files):
            with open(os.path.join(directory, name, f"part-{f:04d}.jsonl"), "w") as out:
                for row in rows[f * per:(f + 1) * per]:
                    out.write(json.dumps(row) + "\n")
    return {name: len(rows) for name, rows in streams.items()}


SCHEMAS = {
    "bids": ("auction LONG, bidder LONG, price LONG, channel STRING, b_time TIMESTAMP", """[
  { name = "auction", type = "int64" }, { name = "bidder", type = "int64" },
  { name = "price", type = "int64" }, { name = "channel", type = "string" },
  { name = "b_time", type = "timestamp" },
]""", "b_time"),
    "persons": ("p_id LONG, name STRING, city STRING, state STRING, p_time TIMESTAMP", """[
  { name = "p_id", type = "int64" }, { name = "name", type = "string" },
  { name = "city", type = "string" }, { name = "state", type = "string" },
  { name = "p_time", type = "timestamp" },
]""", "p_time"),
    "auctions": ("a_id LONG, item STRING, seller LONG, category LONG, initial_bid LONG, a_time TIMESTAMP", """[
  { name = "a_id", type = "int64" }, { name = "item", type = "string" },
  { name = "seller", type = "int64" }, { name = "category", type = "int64" },
  { name = "initial_bid", type = "int64" }, { name = "a_time", type = "timestamp" },
]""", "a_time"),
}

QUERIES = {
    "q0": ["bids"],
    "q1": ["bids"],
    "q5": ["bids"],
    "q7": ["bids"],
    "q8": ["persons", "auctions"],
}


def spark_query(name, F, dfs):
    bids = dfs.get("bids")
    if name == "q0":
        return bids
    if name == "q1":
        return bids.withColumn("price_eur", F.col("price") * 0.908)
    if name == "q5":
        return (bids.groupBy(F.window("b_time", "10 seconds", "2 seconds"), "auction")
                .agg(F.count("*").alias("bids"))
                .select(F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
                        "auction", "bids"))
    if name == "q7":
        per_auction = (bids.groupBy(F.window("b_time", "10 seconds"), "auction")
                       .agg(F.max("price").alias("max_price")))
        return (per_auction.groupBy(F.window(F.window_time("window"), "10 seconds"))
                .agg(F.max("max_price").alias("max_price"))
                .select(F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
                        "max_price"))
    if name == "q8":
        p, a = dfs["persons"], dfs["auctions"]
        return p.join(a, F.expr("p_id = seller AND a_time >= p_time AND a_time <= p_time + interval 10 seconds"))
    raise ValueError(name)


def weir_query(name):
    if name == "q0":
        return ""
    if name == "q1":
        return """[[transform]]
name = "to_eur"
plugin = "${WEIR_PLUGIN_DIR}/weir_plugin_enrich.wasm"
config = { input = "price", output = "price_eur", multiply = 0.908 }
"""
    if name == "q5":
        return """[aggregate]
group_by = ["auction"]
window = { column = "b_time", sliding = { size = "10s", slide = "2s" } }
aggregates = [ { fn = "count", as = "bids" } ]
"""
    if name == "q7":
        return """[aggregate]
group_by = ["auction"]
window = { column = "b_time", tumbling = "10s" }
aggregates = [ { fn = "max", column = "price", as = "max_price" } ]

[aggregate.then]
window = { column = "window_time", tumbling = "10s" }
aggregates = [ { fn = "max", column = "max_price", as = "max_price" } ]
"""
    if name == "q8":
        return """[join]
left = "persons"
right = "auctions"
left_on = ["p_id"]
right_on = ["seller"]
time = { left = "p_time", right = "a_time", lower = "0s", upper = "10s" }
"""
    raise ValueError(name)


def weir_pipeline(name, data, work, tasks):
    streams = QUERIES[name]
    parts = [f'name = "nexmark-{name}"', f'checkpoint = "{work}/checkpoint"', f"parallelism = {tasks}",
             "", "[trigger]", "available_now = true", ""]

    def source(stream):
        return (f'kind = "file"\npath = "{data}/{stream}"\nformat = "json"\norder = "name"\n'
                f"max_files_per_trigger = {FILES_PER_BATCH}\nschema = {SCHEMAS[stream][1]}\n")

    if len(streams) == 1:
        parts.append("[source]\n" + source(streams[0]))
        parts.append(f'[watermark]\ncolumn = "{SCHEMAS[streams[0]][2]}"\ndelay = "5s"\n')
    else:
        for stream in streams:
            parts.append(f'[[sources]]\nname = "{stream}"\n' + source(stream)
                         + f'watermark = {{ column = "{SCHEMAS[stream][2]}", delay = "5s" }}\n')
    parts.append(weir_query(name))
    parts.append(f'[sink]\nkind = "json"\npath = "{work}/out"\noutput_mode = "append"\n')
    return "\n".join(parts)


def output_rows(directory):
    rows = 0
    for path in glob.glob(os.path.join(directory, "**", "*"), recursive=True):
        base = os.path.basename(path)
        if os.path.isfile(path) and not base.startswith(("_", ".")) and ".json" in base \
                and "/_" not in path.replace(directory, ""):
            with open(path) as f:
                rows += sum(1 for line in f if line.strip())
    return rows


def run_spark(spark, F, name, data, work):
    shutil.rmtree(work, ignore_errors=True)
    dfs = {}
    for stream in QUERIES[name]:
        schema, _, column = SCHEMAS[stream]
        dfs[stream] = (spark.readStream.schema(schema).option("maxFilesPerTrigger", FILES_PER_BATCH)
                       .json(os.path.join(data, stream)).withWatermark(column, "5 seconds"))
    started = time.time()
    query = (spark_query(name, F, dfs).writeStream.format("json").outputMode("append")
             .option("path", os.path.join(work, "out"))
             .option("checkpointLocation", os.path.join(work, "checkpoint"))
             .trigger(availableNow=True).start())
    query.awaitTermination()
    return time.time() - started, output_rows(os.path.join(work, "out"))


def run_weir(weir, name, data, work, tasks):
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    path = os.path.join(work, "pipeline.toml")
    with open(path, "w") as f:
        f.write(weir_pipeline(name, data, work, tasks))
    started = time.time()
    done = subprocess.run([weir, "run", "--quiet", path], capture_output=True, text=True)
    took = time.time() - started
    if done.returncode != 0:
        raise RuntimeError(f"weir run {name} failed:\n{done.stderr[-3000:]}")
    return took, output_rows(os.path.join(work, "out"))


def median_run(weir, name, data, work, tasks, runs=3):
    """The median time of `runs` runs (and their output rows, which must agree)."""
    results = [run_weir(weir, name, data, work, tasks) for _ in range(runs)]
    if len({rows for _, rows in results}) != 1:
        raise RuntimeError(f"weir {name} with {tasks} tasks wrote different row counts: {results}")
    return sorted(took for took, _ in results)[runs // 2], results[0][1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--query", action="append", help="only these queries")
    args = ap.parse_args()
    data = os.path.join(args.work, "data")
    shutil.rmtree(data, ignore_errors=True)
    counts = generate(data, args.events, args.files)
    print(f"events: {counts} in {args.files} files per stream, {FILES_PER_BATCH} files per batch", flush=True)

    from pyspark.sql import SparkSession, functions as F
    spark = (SparkSession.builder.master(f"local[{args.cores}]").appName("weir-nexmark")
             .config("spark.sql.shuffle.partitions", str(args.cores))
             .config("spark.ui.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.driver.memory", "2g")
             .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")

    results = []
    for name in args.query or list(QUERIES):
        events = sum(counts[s] for s in QUERIES[name])
        work = os.path.join(args.work, name)
        run_spark(spark, F, name, data, os.path.join(work, "spark-warmup"))
        spark_s, spark_rows = run_spark(spark, F, name, data, os.path.join(work, "spark"))
        # Weir warm too (its compiled-plugin cache filled, as Spark's JIT is
        # by its warm-up run), then the median of three runs each.
        run_weir(args.weir, name, data, os.path.join(work, "weir-warmup"), 1)
        weir1_s, weir1_rows = median_run(args.weir, name, data, os.path.join(work, "weir-1"), 1)
        weirn_s, weirn_rows = median_run(args.weir, name, data, os.path.join(work, "weir-n"), args.cores)
        if not spark_rows == weir1_rows == weirn_rows:
            print(f"{name}: outputs differ: spark {spark_rows} rows, weir {weir1_rows} and {weirn_rows}",
                  flush=True)
        result = {"query": name, "events": events, "output_rows": [spark_rows, weir1_rows, weirn_rows],
                  "spark_s": spark_s, "weir_1_s": weir1_s, "weir_n_s": weirn_s}
        results.append(result)
        print(f"{name}: spark {events / spark_s:>10,.0f} ev/s | weir 1 task {events / weir1_s:>10,.0f} ev/s "
              f"({spark_s / weir1_s:5.1f}x spark) | weir {args.cores} tasks {events / weirn_s:>10,.0f} ev/s "
              f"({spark_s / weirn_s:5.1f}x spark, {weir1_s / weirn_s:4.2f}x 1 task) | rows {spark_rows}",
              flush=True)
    spark.stop()
    with open(os.path.join(args.work, "report.json"), "w") as f:
        json.dump(results, f, indent=1)
    failed = [r["query"] for r in results if len(set(r["output_rows"])) != 1]
    goals = [
        (f"Weir with {args.cores} tasks >= 20x Spark local[{args.cores}] on every query",
         all(r["spark_s"] / r["weir_n_s"] >= 20 for r in results)),
        (f"Weir with {args.cores} tasks >= 1.7x Weir with 1 on the windowed queries",
         all(r["weir_1_s"] / r["weir_n_s"] >= 1.7 for r in results if r["query"] in ("q5", "q7"))),
    ]
    for goal, met in goals:
        print(f"goal: {goal}: {'met' if met else 'NOT met'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
