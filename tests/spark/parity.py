"""Differential tests against Apache Spark: the same seeded, disordered
streams run through Spark Structured Streaming and through Weir, and the
rows of every micro-batch are compared.

    python parity.py --weir PATH/TO/weir --work DIR [--case NAME ...]

One file per micro-batch: Spark reads them with maxFilesPerTrigger=1 and
the availableNow trigger, collecting each batch in foreachBatch; Weir with
`max_files_per_trigger = 1` and `available_now`. One Spark session runs
every case (a JVM start costs seconds). The report (DIR/report.json) lists
each case with its verdict and, for a difference, the first differing
batch's rows; tests/all/differential.rs asserts on it. Exit status 0 when
every case is equal.

Cases are built from `QUERIES` (a Spark query and the Weir pipeline that
means the same) and the streams of `STREAMS` (seeded generators).
"""

import argparse
import calendar
import concurrent.futures
import datetime as dt
import glob
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
import traceback

os.environ["TZ"] = "UTC"
time.tzset()
# Spark's Python workers (applyInPandasWithState) run this interpreter.
os.environ["PYSPARK_PYTHON"] = sys.executable

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

# ---------------------------------------------------------------- streams


class Stream:
    """One input: its rows per micro-batch, its schema (Spark DDL and
    Weir's), and its event-time column."""

    def __init__(self, name, batches, spark_schema, weir_schema, time_column):
        self.name = name
        self.batches = batches
        self.spark_schema = spark_schema
        self.weir_schema = weir_schema
        self.time_column = time_column


def stamp(seconds, micros=0):
    """An ISO-8601 UTC timestamp `seconds` (+ `micros`) after EPOCH, as
    both engines parse it."""
    t = EPOCH + dt.timedelta(seconds=seconds, microseconds=micros)
    if micros:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


EVENT_SPARK = "id STRING, user STRING, ts TIMESTAMP, amount LONG"
EVENT_WEIR = """[
  { name = "id", type = "string" },
  { name = "user", type = "string" },
  { name = "ts", type = "timestamp" },
  { name = "amount", type = "int64" },
]"""


def events(seed, batches=8, rows=40, lateness=(0, 0, 0, 30, 120, 400, 900, 1500),
           duplicates=0.3, nulls=0.0, users=5, churn=False, step=40, micros=False, millis=False):
    """Events with ids, users and amounts. The stream's front moves 0..`step`
    seconds a row; a row lags it by up to a `lateness` drawn per row (most
    on time, some by minutes: several magnitudes around a 10-minute
    watermark); `duplicates` of the rows repeat a recent id; `nulls` of the
    users and amounts are null (and half as many ids); with `churn`, users come and go (each batch
    draws from a moving range); with `micros` or `millis`, timestamps
    carry microseconds or milliseconds."""
    r = random.Random(seed)
    t, next_id, out = 0, 0, []
    for b in range(batches):
        rows_b = []
        for _ in range(rows):
            t += r.randint(0, step)
            ts = max(0, t - r.randint(0, r.choice(lateness)))
            if next_id and r.random() < duplicates:
                key = f"e{r.randint(max(0, next_id - 20), next_id - 1)}"
            else:
                key, next_id = f"e{next_id}", next_id + 1
            if r.random() < nulls / 2:
                key = None
            low = b if churn else 0
            user = None if r.random() < nulls else f"u{r.randint(low, low + users - 1)}"
            amount = None if r.random() < nulls else r.randint(1, 100)
            fraction = r.randint(0, 999_999) if micros else r.randint(0, 999) * 1000 if millis else 0
            rows_b.append({"id": key, "user": user, "ts": stamp(ts, fraction),
                           "amount": amount})
        out.append(rows_b)
    return Stream("events", out, EVENT_SPARK, EVENT_WEIR, "ts")


def impressions_clicks(seed, batches=8, per=25):
    """The reference article's join inputs: impressions, and clicks on the
    same ads mostly within minutes of an impression, some far behind."""
    r = random.Random(seed)
    imps, clicks, next_imp, next_click = [], [], 0, 0
    for b in range(batches):
        base = b * 600
        file_i, file_c = [], []
        for _ in range(per):
            t = base - r.randint(0, 2400) if r.random() < 0.1 else base + r.randint(0, 600)
            file_i.append({"imp_id": next_imp, "ad_id": r.randint(0, 30), "impression_time": stamp(t)})
            next_imp += 1
        for _ in range(per * 4 // 5):
            behind = 5400 if r.random() < 0.12 else 1200
            t = max(0, base + r.randint(0, 600) - r.randint(0, behind))
            ad = None if r.random() < 0.03 else r.randint(0, 30)
            file_c.append({"click_id": next_click, "ad_id": ad, "click_time": stamp(t)})
            next_click += 1
        imps.append(file_i)
        clicks.append(file_c)
    return (
        Stream("impressions", imps, "imp_id LONG, ad_id LONG, impression_time TIMESTAMP",
               """[
  { name = "imp_id", type = "int64" },
  { name = "ad_id", type = "int64" },
  { name = "impression_time", type = "timestamp" },
]""", "impression_time"),
        Stream("clicks", clicks, "click_id LONG, ad_id LONG, click_time TIMESTAMP",
               """[
  { name = "click_id", type = "int64" },
  { name = "ad_id", type = "int64" },
  { name = "click_time", type = "timestamp" },
]""", "click_time"),
    )


def example_streams(name, like):
    """An example's input files (examples/NAME/data/<input>/batch-N.jsonl),
    as streams with the schemas of `like`."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", name, "data")
    out = []
    for stream in like:
        files = sorted(glob.glob(os.path.join(root, stream.name, "batch-*.jsonl")),
                       key=lambda f: int(re.search(r"batch-(\d+)", f).group(1)))
        batches = [[json.loads(l) for l in open(f) if l.strip()] for f in files]
        out.append(Stream(stream.name, batches, stream.spark_schema, stream.weir_schema, stream.time_column))
    return out


def write_stream(stream, directory):
    """One JSON-lines file per micro-batch, named (and dated) in order."""
    os.makedirs(directory, exist_ok=True)
    for b, rows in enumerate(stream.batches):
        path = os.path.join(directory, f"{b:03d}.json")
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        os.utime(path, (1_700_000_000 + b * 10,) * 2)


# ---------------------------------------------------------------- queries
# Each query: the Spark plan over its inputs' DataFrames, and the Weir
# pipeline's query part (everything but the sources and the sink).

ALL_AGGS_WEIR = """aggregates = [
  { fn = "count", as = "rows" },
  { fn = "count", column = "amount", as = "amounts" },
  { fn = "sum", column = "amount", as = "total" },
  { fn = "min", column = "amount", as = "least" },
  { fn = "max", column = "amount", as = "most" },
  { fn = "avg", column = "amount", as = "mean" },
  { fn = "min", column = "id", as = "first_id" },
  { fn = "max", column = "id", as = "last_id" },
]"""


def all_aggs(F):
    return [F.count("*").alias("rows"), F.count("amount").alias("amounts"),
            F.sum("amount").alias("total"), F.min("amount").alias("least"),
            F.max("amount").alias("most"), F.avg("amount").alias("mean"),
            F.min("id").alias("first_id"), F.max("id").alias("last_id")]


def windowed(kind, keys=("user",)):
    """A window aggregate of every supported aggregate per `keys`."""
    spec = {
        "tumbling": ('tumbling = "5m"', lambda F: F.window("ts", "5 minutes")),
        "sliding": ('sliding = { size = "10m", slide = "5m" }', lambda F: F.window("ts", "10 minutes", "5 minutes")),
        "session": ('session = { gap = "3m" }', lambda F: F.session_window("ts", "3 minutes")),
    }[kind]
    group = ", ".join(f'"{k}"' for k in keys)

    def spark(F, dfs):
        w = spec[1](F).alias("w")
        q = dfs["events"].groupBy(w, *keys).agg(*all_aggs(F))
        return q.select(F.col("w.start").alias("window_start"), F.col("w.end").alias("window_end"),
                        *keys, "rows", "amounts", "total", "least", "most", "mean", "first_id", "last_id")

    weir = f"""[aggregate]
group_by = [{group}]
window = {{ column = "ts", {spec[0]} }}
{ALL_AGGS_WEIR}
"""
    return spark, weir


def first_last(kind):
    """`first` and `last` of a window: the amount of the row with the
    earliest and the latest event time. Spark's own first()/last() take
    rows in arrival order, so Spark's side is min_by/max_by on the event
    time, which is what Weir's mean (timestamps with microseconds: no ties)."""
    window = {"tumbling": ('tumbling = "5m"', lambda F: F.window("ts", "5 minutes")),
              "session": ('session = { gap = "3m" }', lambda F: F.session_window("ts", "3 minutes"))}[kind]

    def spark(F, dfs):
        q = dfs["events"].groupBy(window[1](F).alias("w"), "user").agg(
            F.min_by("amount", "ts").alias("first_amount"), F.max_by("amount", "ts").alias("last_amount"),
            F.count("*").alias("rows"))
        return q.select(F.col("w.start").alias("window_start"), F.col("w.end").alias("window_end"), "user",
                        "first_amount", "last_amount", "rows")

    weir = f"""[aggregate]
group_by = ["user"]
window = {{ column = "ts", {window[0]} }}
aggregates = [
  {{ fn = "first", column = "amount", as = "first_amount" }},
  {{ fn = "last", column = "amount", as = "last_amount" }},
  {{ fn = "count", as = "rows" }},
]
"""
    return spark, weir


def dedup_within():
    return (lambda F, dfs: dfs["events"].dropDuplicatesWithinWatermark(["id"]),
            'drop_duplicates_within_watermark = ["id"]\n')


def dedup_plain(keys):
    return (lambda F, dfs: dfs["events"].dropDuplicates(list(keys)),
            f"drop_duplicates = [{', '.join(repr(k).replace(chr(39), chr(34)) for k in keys)}]\n")


def join(kind):
    """Impressions joined with clicks on the ad within an hour after the
    impression (Spark: an equality and a time-range condition)."""
    spark_how = {"inner": "inner", "left_outer": "left_outer", "right_outer": "right_outer",
                 "left_semi": "left_semi"}[kind]

    def spark(F, dfs):
        i = dfs["impressions"].alias("i")
        c = dfs["clicks"].alias("c")
        cond = F.expr("i.ad_id = c.ad_id AND c.click_time >= i.impression_time "
                      "AND c.click_time <= i.impression_time + interval 1 hour")
        j = i.join(c, cond, spark_how)
        if kind == "left_semi":
            return j.select("imp_id", "ad_id", "impression_time")
        return j.select("i.imp_id", F.coalesce(F.col("i.ad_id"), F.col("c.ad_id")).alias("ad_id"),
                        "i.impression_time", "c.click_id", "c.click_time")

    weir = f"""[join]
left = "impressions"
right = "clicks"
type = "{kind}"
on = ["ad_id"]
time = {{ left = "impression_time", right = "click_time", lower = "0s", upper = "1 hour" }}
"""
    return spark, weir


def sessionize(gap_minutes):
    """Sessions per user from a stateful function with event-time timeouts:
    in Weir the `sessionize` Wasm plugin, in Spark the same logic in
    applyInPandasWithState (pyspark's flatMapGroupsWithState). Each row at
    t opens [t, t + gap); a user's overlapping sessions merge; a session is
    emitted when the watermark reaches its end, by its timeout."""
    gap_ms = gap_minutes * 60_000

    def spark(F, dfs):
        import pandas as pd
        from pyspark.sql.streaming.state import GroupStateTimeout

        def fn(key, frames, state):
            sessions = json.loads(state.get[0]) if state.exists else []
            if not state.hasTimedOut:
                for frame in frames:
                    for t in frame["ts"]:
                        start = pd.Timestamp(t).value // 1_000_000
                        merge_session(sessions, [start, start + gap_ms, 1])
            wm = state.getCurrentWatermarkMs()
            closed = [s for s in sessions if s[1] <= wm]
            still_open = [s for s in sessions if s[1] > wm]
            if still_open:
                state.update((json.dumps(still_open),))
                state.setTimeoutTimestamp(min(s[1] for s in still_open) - 1)
            else:
                state.remove()
            if closed:
                yield pd.DataFrame({
                    "user": [key[0]] * len(closed),
                    "window_start": pd.to_datetime([s[0] for s in closed], unit="ms"),
                    "window_end": pd.to_datetime([s[1] for s in closed], unit="ms"),
                    "count": [s[2] for s in closed],
                })

        return (dfs["events"].groupBy("user").applyInPandasWithState(
                    fn, "user STRING, window_start TIMESTAMP, window_end TIMESTAMP, count LONG",
                    "sessions STRING", "append", GroupStateTimeout.EventTimeTimeout))

    weir = f"""[stateful]
name = "sessionize"
plugin = "${{WEIR_PLUGIN_DIR}}/weir_plugin_sessionize.wasm"
key = ["user"]
state_timeout = "event_time"
config = {{ time_column = "ts", gap = "{gap_minutes}m" }}
"""
    return spark, weir


def merge_session(sessions, new):
    """Adds [start, end, count] to a user's sessions, merging those it
    overlaps or touches (the sessionize plugin's `merge`)."""
    for s in [s for s in sessions if s[0] <= new[1] and new[0] <= s[1]]:
        sessions.remove(s)
        new = [min(s[0], new[0]), max(s[1], new[1]), s[2] + new[2]]
    sessions.append(new)
    sessions.sort()


# ---------------------------------------------------------------- chained operators
# Several stateful operators in one query (Spark 3.4+): each judges late
# rows and evicts by the watermark the operator before it hands on.

WINDOW_SPEC = {
    "tumbling": ('tumbling = "5m"', lambda F, c: F.window(c, "5 minutes")),
    "sliding": ('sliding = { size = "10m", slide = "5m" }', lambda F, c: F.window(c, "10 minutes", "5 minutes")),
    "session": ('session = { gap = "3m" }', lambda F, c: F.session_window(c, "3 minutes")),
}


def window_columns(F, *rest):
    return [F.col("w.start").alias("window_start"), F.col("w.end").alias("window_end"), *rest]


def dedup_then_windowed(kind):
    """dropDuplicatesWithinWatermark on the id, then every aggregate per user."""
    spec = WINDOW_SPEC[kind]

    def spark(F, dfs):
        q = dfs["events"].dropDuplicatesWithinWatermark(["id"]).groupBy(spec[1](F, "ts").alias("w"), "user")
        return q.agg(*all_aggs(F)).select(*window_columns(F, "user", "rows", "amounts", "total", "least", "most",
                                                           "mean", "first_id", "last_id"))

    weir = f"""drop_duplicates_within_watermark = ["id"]

[aggregate]
group_by = ["user"]
window = {{ column = "ts", {spec[0]} }}
{ALL_AGGS_WEIR}
"""
    return spark, weir


def window_over_window(kind):
    """A window aggregate per user, then 15-minute windows over its windows'
    `window_time` (Spark's way to aggregate an aggregation by event time)."""
    spec = WINDOW_SPEC[kind]

    def spark(F, dfs):
        first = dfs["events"].groupBy(spec[1](F, "ts").alias("w1"), "user").agg(
            F.count("*").alias("rows"), F.sum("amount").alias("total"), F.max("amount").alias("most"))
        second = first.groupBy(F.window(F.window_time("w1"), "15 minutes").alias("w"), "user").agg(
            F.sum("rows").alias("rows"), F.sum("total").alias("total"), F.max("most").alias("most"),
            F.count("*").alias("windows"))
        return second.select(*window_columns(F, "user", "rows", "total", "most", "windows"))

    weir = f"""[aggregate]
group_by = ["user"]
window = {{ column = "ts", {spec[0]} }}
aggregates = [
  {{ fn = "count", as = "rows" }},
  {{ fn = "sum", column = "amount", as = "total" }},
  {{ fn = "max", column = "amount", as = "most" }},
]

[aggregate.then]
group_by = ["user"]
window = {{ column = "window_time", tumbling = "15m" }}
aggregates = [
  {{ fn = "sum", column = "rows", as = "rows" }},
  {{ fn = "sum", column = "total", as = "total" }},
  {{ fn = "max", column = "most", as = "most" }},
  {{ fn = "count", as = "windows" }},
]
"""
    return spark, weir


def join_then_windowed(kind, time_column):
    """The impressions/clicks join, then 10-minute windows per ad over one
    side's event time: clicks (or impressions) per ad and window."""
    join_spark, join_weir = join(kind)

    def spark(F, dfs):
        q = join_spark(F, dfs).groupBy(F.window(time_column, "10 minutes").alias("w"), "ad_id")
        return q.agg(F.count("*").alias("rows"), F.count("click_id").alias("clicks"),
                     F.min("imp_id").alias("first_imp"), F.max("click_id").alias("last_click")).select(
            *window_columns(F, "ad_id", "rows", "clicks", "first_imp", "last_click"))

    weir = join_weir + f"""
[aggregate]
group_by = ["ad_id"]
window = {{ column = "{time_column}", tumbling = "10m" }}
aggregates = [
  {{ fn = "count", as = "rows" }},
  {{ fn = "count", column = "click_id", as = "clicks" }},
  {{ fn = "min", column = "imp_id", as = "first_imp" }},
  {{ fn = "max", column = "click_id", as = "last_click" }},
]
"""
    return spark, weir


def clicks_per_ad():
    """examples/clicks-per-ad: the inner join, then clicks per ad in
    half-hour windows of click time."""
    join_spark, join_weir = join("inner")

    def spark(F, dfs):
        q = join_spark(F, dfs).groupBy(F.window("click_time", "30 minutes").alias("w"), "ad_id")
        return q.agg(F.count("*").alias("rows"), F.max("click_id").alias("last_click")).select(
            *window_columns(F, "ad_id", "rows", "last_click"))

    weir = join_weir + """
[aggregate]
group_by = ["ad_id"]
window = { column = "click_time", tumbling = "30m" }
aggregates = [
  { fn = "count", as = "rows" },
  { fn = "max", column = "click_id", as = "last_click" },
]
"""
    return spark, weir


def two_event_streams(seed_a, seed_b):
    """Two inputs of events (the second with its own ids), for a union."""
    a, b = events(seed_a), events(seed_b, rows=30)
    for rows in b.batches:
        for row in rows:
            row["id"] = row["id"] and "b" + row["id"]
    return (Stream("shop", a.batches, a.spark_schema, a.weir_schema, "ts"),
            Stream("app", b.batches, b.spark_schema, b.weir_schema, "ts"))


def union_then(query):
    """`query` over the union of the inputs `shop` and `app`."""
    inner_spark, weir = query

    def spark(F, dfs):
        return inner_spark(F, {"events": dfs["shop"].unionByName(dfs["app"])})

    return spark, weir


class Case:
    def __init__(self, name, streams, query, mode="append", delay="10 minutes", policy=None,
                 allow_multiple=True, seed=None):
        self.name = name
        self.streams = streams
        self.spark, self.weir = query
        self.mode = mode
        self.delay = delay
        self.policy = policy
        self.allow_multiple = allow_multiple
        self.seed = seed
        # Spark counts the rows a window aggregate drops as late after its
        # partial aggregation (one per key and window in an input
        # partition); Weir counts input rows (see the README).
        self.compare_dropped = "[aggregate]" not in self.weir


def cases():
    out = []
    # Windows: every aggregate, three kinds, append and update, several seeds.
    for kind, seeds in [("tumbling", (1, 2, 3, 4)), ("sliding", (5, 6, 7)), ("session", (8, 9, 10, 11))]:
        for s in seeds:
            out.append(Case(f"{kind}_append_seed{s}", [events(s)], windowed(kind), seed=s))
        # Spark refuses update mode for session windows; Weir allows it (see
        # the README), tested against expected rows in tests/all/windows.rs.
        if kind != "session":
            out.append(Case(f"{kind}_update_seed{seeds[0]}", [events(seeds[0])], windowed(kind), mode="update",
                            seed=seeds[0]))
    out.append(Case("tumbling_complete_seed12", [events(12, batches=6)], windowed("tumbling"), mode="complete",
                    seed=12))
    # No grouping key; two keys; keys that come and go; null keys and values.
    out.append(Case("tumbling_global_seed13", [events(13)], windowed("tumbling", keys=()), seed=13))
    out.append(Case("sliding_global_update_seed14", [events(14)], windowed("sliding", keys=()), mode="update",
                    seed=14))
    out.append(Case("tumbling_two_keys_seed15", [events(15, users=3)], windowed("tumbling", keys=("user", "id")),
                    seed=15))
    out.append(Case("session_churning_users_seed16", [events(16, churn=True, users=3)], windowed("session"),
                    seed=16))
    out.append(Case("tumbling_null_keys_and_values_seed17", [events(17, nulls=0.2)], windowed("tumbling"),
                    seed=17))
    out.append(Case("session_null_keys_and_values_seed18", [events(18, nulls=0.2)], windowed("session"),
                    seed=18))
    # first and last, by event time.
    out.append(Case("tumbling_first_last_seed25", [events(25, micros=True)], first_last("tumbling"), seed=25))
    # (Milliseconds: Weir's session bounds have no microseconds, see the README.)
    out.append(Case("session_first_last_seed26", [events(26, millis=True)], first_last("session"),
                    seed=26))
    # Rows late by an hour or two: dropped, and counted as dropped.
    out.append(Case("sliding_very_late_seed27", [events(27, lateness=(0, 3600, 7200))], windowed("sliding"),
                    seed=27))
    out.append(Case("tumbling_very_late_seed28", [events(28, lateness=(0, 3600, 7200))], windowed("tumbling"),
                    seed=28))
    # Late rows of one magnitude: all within the watermark, then all beyond.
    out.append(Case("tumbling_only_slightly_late_seed19", [events(19, lateness=(0, 60, 300))], windowed("tumbling"),
                    seed=19))
    out.append(Case("session_very_late_seed20", [events(20, lateness=(0, 3600, 7200))], windowed("session"),
                    seed=20))
    # A short watermark delay; long sparse sessions spanning batches.
    out.append(Case("tumbling_one_minute_delay_seed21", [events(21)], windowed("tumbling"), delay="1 minute",
                    seed=21))
    out.append(Case("session_spanning_batches_seed22", [events(22, rows=12, step=90, users=3, lateness=(0, 30))],
                    windowed("session"), seed=22))
    # Deduplication.
    for s in (31, 32, 33, 34):
        out.append(Case(f"dedup_within_watermark_seed{s}", [events(s)], dedup_within(), seed=s))
    out.append(Case("dedup_within_watermark_null_ids_seed35", [events(35, nulls=0.2)], dedup_within(), seed=35))
    for s in (36, 37):
        out.append(Case(f"dedup_plain_id_ts_seed{s}", [events(s)], dedup_plain(("id", "ts")), seed=s))
    out.append(Case("dedup_plain_user_ts_seed38", [events(38)], dedup_plain(("user", "ts")), seed=38))
    # A stateful function with event-time timeouts against flatMapGroupsWithState.
    for s in (61, 62, 63):
        out.append(Case(f"stateful_function_sessions_seed{s}", [events(s)], sessionize(3), seed=s))
    # Stream-stream joins: all four kinds, two seeds each.
    for kind in ("inner", "left_outer", "right_outer", "left_semi"):
        for s in (41, 42):
            out.append(Case(f"join_{kind}_seed{s}", list(impressions_clicks(s)), join(kind), seed=s))
    out.append(Case("example_ad_clicks", example_streams("ad-clicks", impressions_clicks(0)), join("left_outer")))
    # Two inputs, one watermark each: the query's is the min (Spark's
    # default) or the max of theirs (multipleWatermarkPolicy).
    for kind, s in (("inner", 43), ("left_outer", 44), ("right_outer", 43), ("left_semi", 44)):
        out.append(Case(f"join_{kind}_max_watermark_seed{s}", list(impressions_clicks(s)), join(kind),
                        policy="max", seed=s))
    # Chained stateful operators (Spark 3.4+), each by the watermark the
    # one before it hands on.
    for kind, s in (("tumbling", 71), ("session", 73)):
        out.append(Case(f"dedup_then_{kind}_seed{s}", [events(s)], dedup_then_windowed(kind), seed=s))
    out.append(Case("dedup_then_tumbling_update_seed74", [events(74)], dedup_then_windowed("tumbling"),
                    mode="update", seed=74))
    out.append(Case("dedup_then_tumbling_complete_seed75", [events(75, batches=6)],
                    dedup_then_windowed("tumbling"), mode="complete", seed=75))
    for kind, seeds in (("tumbling", (76, 77)), ("sliding", (78,)), ("session", (79,))):
        for s in seeds:
            out.append(Case(f"{kind}_then_15m_windows_seed{s}", [events(s)], window_over_window(kind), seed=s))
    out.append(Case("join_inner_then_click_windows_seed45", list(impressions_clicks(45, batches=12)),
                    join_then_windowed("inner", "click_time"), seed=45))
    out.append(Case("join_left_outer_then_impression_windows_seed46", list(impressions_clicks(46, batches=12)),
                    join_then_windowed("left_outer", "impression_time"), seed=46))
    out.append(Case("join_inner_then_impression_windows_update_seed47", list(impressions_clicks(47)),
                    join_then_windowed("inner", "impression_time"), mode="update", seed=47))
    out.append(Case("join_inner_then_click_windows_max_watermark_seed48", list(impressions_clicks(48, batches=12)),
                    join_then_windowed("inner", "click_time"), policy="max", seed=48))
    out.append(Case("example_clicks_per_ad", example_streams("clicks-per-ad", impressions_clicks(0)),
                    clicks_per_ad()))
    out.append(Case("union_then_tumbling_seed81", list(two_event_streams(81, 82)),
                    union_then(windowed("tumbling")), seed=81))
    out.append(Case("union_then_dedup_within_watermark_seed83", list(two_event_streams(83, 84)),
                    union_then(dedup_within()), seed=83))
    out.append(Case("union_then_dedup_then_session_max_watermark_seed85", list(two_event_streams(85, 86)),
                    union_then(dedup_then_windowed("session")), policy="max", seed=85))
    # Timestamps with microseconds (watermarks have milliseconds, in both).
    out.append(Case("tumbling_microsecond_timestamps_seed23", [events(23, micros=True)], windowed("tumbling"),
                    seed=23))
    out.append(Case("dedup_within_watermark_microsecond_timestamps_seed24", [events(24, micros=True)],
                    dedup_within(), seed=24))
    # Spark's single-watermark mode (statefulOperator.allowMultiple=false).
    out.append(Case("dedup_within_watermark_single_watermark_seed31", [events(31)], dedup_within(),
                    allow_multiple=False, seed=31))
    out.append(Case("tumbling_single_watermark_seed1", [events(1)], windowed("tumbling"), allow_multiple=False,
                    seed=1))
    return out


# ---------------------------------------------------------------- running


def normal_value(v):
    """Values both engines print alike: timestamps as epoch microseconds,
    floats to 9 significant digits."""
    if isinstance(v, dt.datetime):
        return calendar.timegm(v.utctimetuple()) * 1_000_000 + v.microsecond
    if isinstance(v, str) and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", v):
        t = dt.datetime.fromisoformat(v.replace("Z", "+00:00"))
        return calendar.timegm(t.utctimetuple()) * 1_000_000 + t.microsecond
    if isinstance(v, float):
        return float(f"{v:.9g}")
    return v


def normal_rows(rows):
    """Rows as sorted JSON strings; a null field and a missing one are alike."""
    out = []
    for r in rows:
        out.append(json.dumps({k: normal_value(v) for k, v in r.items() if v is not None}, sort_keys=True))
    return sorted(out)


def run_spark(spark, F, case, inputs, work):
    # A session of its own (the same Spark context): the cases run side by
    # side, each with its own settings.
    spark = spark.newSession()
    spark.conf.set("spark.sql.streaming.multipleWatermarkPolicy", case.policy or "min")
    spark.conf.set("spark.sql.streaming.statefulOperator.allowMultiple", str(case.allow_multiple).lower())
    dfs = {}
    for stream, directory in inputs:
        df = (spark.readStream.schema(stream.spark_schema).option("maxFilesPerTrigger", 1)
              .json(directory).withWatermark(stream.time_column, case.delay))
        dfs[stream.name] = df
    q = case.spark(F, dfs)
    results = {}

    def collect(batch, batch_id):
        results[batch_id] = normal_rows([r.asDict() for r in batch.collect()])

    query = (q.writeStream.outputMode(case.mode).foreachBatch(collect).trigger(availableNow=True)
             .option("checkpointLocation", os.path.join(work, "spark-checkpoint")).start())
    query.awaitTermination()
    progress = {}
    for p in query.recentProgress:
        p = p if isinstance(p, dict) else json.loads(p.json)
        dropped = sum(op.get("numRowsDroppedByWatermark", 0) for op in p.get("stateOperators", []))
        progress[p["batchId"]] = progress_of(p, dropped)
    return results, progress


def progress_of(p, dropped):
    """What both engines report of a batch alike: the watermark it used and
    the rows its stateful operators dropped as late. (Not numInputRows:
    Spark counts the rows its file scan returns, after the filters it
    pushes into the scan, such as a join key's `IS NOT NULL`.)"""
    return {"watermark": normal_value(p.get("eventTime", {}).get("watermark")),
            "numRowsDroppedByWatermark": dropped}


def weir_pipeline(case, inputs, work):
    delay = case.delay
    head = [f'name = "{case.name}"', f'checkpoint = "{work}/weir-checkpoint"']
    if not case.allow_multiple:
        head.append("stateful_operator_allow_multiple = false")
    if case.policy:
        head.append(f'multiple_watermark_policy = "{case.policy}"')
    query = case.weir
    top, tables = (query, "") if not query.startswith("[") else ("", query)
    parts = ["\n".join(head), top, "[trigger]\navailable_now = true\n"]

    def source(stream, directory):
        return (f'kind = "file"\npath = "{directory}"\nformat = "json"\norder = "name"\n'
                f"max_files_per_trigger = 1\nschema = {stream.weir_schema}\n")

    if len(inputs) == 1:
        stream, directory = inputs[0]
        parts.append("[source]\n" + source(stream, directory))
        parts.append(f'[watermark]\ncolumn = "{stream.time_column}"\ndelay = "{delay}"\n')
    else:
        for stream, directory in inputs:
            parts.append(f'[[sources]]\nname = "{stream.name}"\n' + source(stream, directory)
                         + f'watermark = {{ column = "{stream.time_column}", delay = "{delay}" }}\n')
    parts.append(tables)
    # The console sink, as JSON lines under `Batch: N` headers: it takes
    # every output mode, as Spark's foreachBatch does (file sinks append).
    parts.append(f'[sink]\nkind = "console"\nformat = "json"\noutput_mode = "{case.mode}"\n')
    return "\n".join(parts)


def run_weir(weir, case, inputs, work):
    path = os.path.join(work, "pipeline.toml")
    with open(path, "w") as f:
        f.write(weir_pipeline(case, inputs, work))
    progress_log = os.path.join(work, "weir-progress.jsonl")
    done = subprocess.run([weir, "run", path, "--progress-log", progress_log], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"weir run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    results, batch = {}, None
    for line in done.stdout.splitlines():
        header = re.fullmatch(r"Batch: (\d+)", line)
        if header:
            batch = int(header.group(1))
            results[batch] = []
        elif line.startswith("{"):
            results[batch].append(json.loads(line))
        elif line.strip("-"):
            raise RuntimeError(f"unexpected output line {line!r}")
    results = {b: normal_rows(rows) for b, rows in results.items()}
    progress = {}
    with open(progress_log) as lines:
        for line in lines:
            p = json.loads(line)
            progress[p["batchId"]] = progress_of(p, p["numRowsDroppedByWatermark"])
    return results, progress
    return results


def compare(spark_out, weir_out, compare_dropped=True):
    """None when every batch has the same rows and progress, else the
    first difference."""
    (spark_rows, spark_progress), (weir_rows, weir_progress) = spark_out, weir_out

    def compared(progress):
        if progress is None or compare_dropped:
            return progress
        return {k: v for k, v in progress.items() if k != "numRowsDroppedByWatermark"}

    batches = sorted(set(spark_rows) | set(weir_rows) | set(spark_progress) | set(weir_progress))
    for b in batches:
        s, w = spark_rows.get(b, []), weir_rows.get(b, [])
        if s != w:
            return {"batch": b, "spark_rows": len(s), "weir_rows": len(w),
                    "only_spark": sorted(set(s) - set(w))[:5], "only_weir": sorted(set(w) - set(s))[:5]}
        sp, wp = compared(spark_progress.get(b)), compared(weir_progress.get(b))
        if sp != wp:
            return {"batch": b, "spark_progress": sp, "weir_progress": wp}
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--case", action="append", help="run only these cases (names)")
    ap.add_argument("--parallel", type=int, default=3, help="cases run at once")
    args = ap.parse_args()

    from pyspark.sql import SparkSession, functions as F
    spark = (SparkSession.builder.master("local[2]").appName("weir-parity")
             .config("spark.sql.shuffle.partitions", "1")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.adaptive.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.streaming.stateStore.maintenanceInterval", "600s")
             # Interpreted expressions: tiny batches spend less CPU than
             # compiling generated code (a twelfth less, measured).
             .config("spark.sql.codegen.wholeStage", "false")
             .config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
             # The JIT's first tier only, one GC thread: a quarter less CPU
             # for these short queries (measured on 2 cores).
             .config("spark.driver.extraJavaOptions",
                     "-Duser.timezone=UTC -XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")

    selected = [c for c in cases() if not args.case or c.name in args.case]

    def run(case):
        work = os.path.join(args.work, case.name)
        shutil.rmtree(work, ignore_errors=True)
        inputs = []
        for stream in case.streams:
            directory = os.path.join(work, "input", stream.name)
            write_stream(stream, directory)
            inputs.append((stream, directory))
        started = time.time()
        entry = {"name": case.name, "seed": case.seed, "mode": case.mode}
        try:
            s = run_spark(spark, F, case, inputs, work)
            t_spark = time.time() - started
            w = run_weir(args.weir, case, inputs, work)
            entry.update(batches=len(set(s[1]) | set(w[1])), rows=sum(len(v) for v in s[0].values()),
                         spark_seconds=round(t_spark, 2), weir_seconds=round(time.time() - started - t_spark, 2),
                         difference=compare(s, w, case.compare_dropped))
        except Exception:
            entry["error"] = traceback.format_exc()[-3000:]
        entry["equal"] = "error" not in entry and entry["difference"] is None
        print(f"{'equal' if entry['equal'] else 'DIFFERENT'}: {case.name} ({entry.get('batches')} batches, "
              f"{entry.get('rows')} rows; spark {entry.get('spark_seconds')} s, weir {entry.get('weir_seconds')} s)",
              flush=True)
        return entry

    # Spark's driver waits on itself much of a micro-batch (planning,
    # scheduling, checkpoint files): a few queries at once keep two cores busy.
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        entries = list(pool.map(run, selected))
    report = {"spark_version": spark.version, "cases": entries}
    with open(os.path.join(args.work, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    failed = sum(not e["equal"] for e in entries)
    spark.stop()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
