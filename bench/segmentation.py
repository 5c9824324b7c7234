"""Segmentation benchmark (issue 14), in process, on BENCH_SEGMENTATION_PROFILES synthetic
profiles (1,000,000 by default) with realistic traits and 90 days of daily counters.

1. The view: time to load every profile (ProfileState -> columns, as the rebuild does after
   decoding ScanProfiles), and the rebuild from Profile protos (decode + state + columns) on a
   sample; resident memory of the view per profile; and the whole rebuild a replica does on
   start: every profile streamed by a profile service process (its embedded store filled with
   them) through ScanProfiles into a new view.
2. Estimate (the vectorised evaluation, count and a sample of 10) for five definitions of
   growing complexity and a sixth on an event property (EUR revenue: an event series, whose
   days each profile with EUR orders has, ~1 a profile), each beside a hand-written DuckDB query over the same data (DuckDB reads
   it from Parquet files Polars wrote; load time not counted), and the same six in Polars.
3. Incremental evaluation: a profile's state read from the view and the six definitions
   evaluated plainly (each compiled once, as the catalog holds it), per second; the
   profile.updated handler end to end (state moved, segments reading the change evaluated,
   transitions stored in SQLite and published on a fresh nats-server), one update at a time (the
   consumer's fallback) and 64 at a time (a fetched batch): updates per second and latency per
   call; and the whole service, in a process of its own as a deployment runs it (one replica,
   every partition), fed 2,000 and then 500 profile.updated a second by this process, each a
   transition: p50 and p99 from publish to segment.membership received, and the service's CPU
   per update (from /proc, robust to the machine's load, printed beside it).
4. RFM: a view of the same population holding the commerce computed traits (70% customers,
   orders on a day of the last two years), the recompute (the view's measures, the summary a
   replica sends, the merged edges) and Estimate of each named segment under those edges.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import grpc
import nats as nats_client
import numpy as np
import polars as pl
from google.protobuf import struct_pb2

from bench import _process
from mosaic.events.v1 import profile_updated_pb2, segment_membership_pb2
from mosaic.platform import topics
from mosaic.platform.bus import Bus, Delivery
from mosaic.platform.config import PlatformSettings, SecuritySettings
from mosaic.profile.v1 import profile_pb2
from mosaic.segmentation.v1 import segment_pb2
from mosaic.segmentation.v1 import segmentation_service_pb2 as pb
from mosaic.segmentation.v1.segmentation_service_pb2_grpc import SegmentationServiceStub
from mosaic.testing.nats_server import NatsServer
from segmentation_service import compiler, rfm, series
from segmentation_service.catalog import SegmentCatalog
from segmentation_service.columns import ColumnarView
from segmentation_service.evaluate import DEFAULT_POLICY, due_function, predicate
from segmentation_service.membership import Memberships
from segmentation_service.profiles import ProfileReader
from segmentation_service.scoring import local_summary
from segmentation_service.state import DAY, EPOCH, ProfileState
from segmentation_service.store import open_store

PROFILES = int(os.environ.get("BENCH_SEGMENTATION_PROFILES", "1000000"))
# "latency": only the service in its own process at a fixed rate (publish -> segment.membership)
ONLY = os.environ.get("BENCH_SEGMENTATION_ONLY", "")
LATENCY_SECONDS = float(os.environ.get("BENCH_SEGMENTATION_LATENCY_SECONDS", "5"))
# The feed publishes a rate's updates in bursts this many seconds apart (a burst is rate x tick updates).
LATENCY_TICK = float(os.environ.get("BENCH_SEGMENTATION_TICK", "0.05"))
LATENCY_RATES = tuple(int(r) for r in os.environ.get("BENCH_SEGMENTATION_RATES", "2000,500").split(","))
NOW = time.time()
TODAY = int(NOW // DAY)
PLANS = np.array(["free", "pro", "team", "enterprise"])
COUNTRIES = np.array(["FR", "DE", "ES", "IT", "GB", "US", "CA", "BR", "IN", "JP", "NL", "SE", "PL", "PT", "MX", "AU"])
DOMAINS = np.array(["gmail.com", "yahoo.com", "outlook.com", "acme.com", "example.org"])
EVENTS = ("Order Completed", "page", "Email Opened")
DEFINITIONS = [
    'traits.plan = "pro"',
    'traits.plan = "pro" and count(event "Order Completed" in last 30d) >= 2',
    'traits.country in ["FR", "DE", "ES"] and traits.ltv > 500 and has email',
    '(traits.plan in ["pro", "team"] or traits.ltv between 100 and 1000) and count(event "Order Completed" in last 30d)'
    ' >= 1 and not count(event "Email Opened" in last 14d) > 0',
    'traits.email ends with "@gmail.com" and traits.signed_up < now - 30d and count(event "page" in last 7d) >= 3'
    " and is known",
    # An event property and a filter: read from an event series, sparse in the view.
    'traits.plan in ["pro", "team"] and sum(event "Order Completed".revenue where currency = "EUR" in last 30d) > 100',
]
EUR = series.name_of(getattr(compiler.definition_of(text=DEFINITIONS[-1])[1], "and").operands[-1].event)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthesize(n: int, seed: int = 14) -> dict:
    """Columns of n profiles and their counters in long form (profile, event, day, count)."""
    rng = np.random.default_rng(seed)
    data: dict[str, Any] = {
        "plan": PLANS[rng.choice(4, n, p=[0.6, 0.25, 0.1, 0.05])],
        "country": COUNTRIES[rng.integers(0, len(COUNTRIES), n)],
        "age": rng.integers(18, 80, n).astype(float),
        "ltv": np.round(rng.exponential(300, n), 2),
        "vip": rng.random(n) < 0.05,
        "has_email": rng.random(n) < 0.8,
        "known": rng.random(n) < 0.6,
        "signed_up_day": TODAY - rng.integers(0, 720, n),
        "domain": DOMAINS[rng.integers(0, len(DOMAINS), n)],
    }
    rows = []
    for index, (_event, mean) in enumerate(zip(EVENTS, (2.0, 8.0, 4.0), strict=False)):
        per = rng.poisson(mean, n)
        owner = np.repeat(np.arange(n), per)
        day = TODAY - rng.integers(0, 90, len(owner))
        frame = (
            pl.DataFrame({"pid": owner, "event": np.full(len(owner), index, np.int8), "day": day})
            .group_by(["pid", "event", "day"])
            .len(name="n")
        )
        rows.append(frame)
    data["counters"] = pl.concat(rows).sort("pid")
    # The EUR orders of each (profile, day) with orders: half of them, revenue ~ 60 an order.
    orders = data["counters"].filter(pl.col("event") == 0)
    eur = rng.binomial(orders["n"].to_numpy(), 0.5)
    value = rng.exponential(60, len(eur)).round(2) + 1
    spread = rng.random(len(eur)) * 0.5
    data["eur"] = pl.DataFrame(
        {
            "pid": orders["pid"],
            "day": orders["day"],
            "n": eur,
            "sum": value * eur,
            "min": np.where(eur > 1, value * (1 - spread), value),
            "max": np.where(eur > 1, value * (1 + spread), value),
        }
    ).filter(pl.col("n") > 0)
    return data


def state_of(data: dict, i: int, counters: list, eur: list) -> ProfileState:
    signed = (EPOCH + timedelta(days=int(data["signed_up_day"][i]))).isoformat() + "T09:30:00Z"
    traits = {
        "plan": str(data["plan"][i]),
        "country": str(data["country"][i]),
        "age": float(data["age"][i]),
        "ltv": float(data["ltv"][i]),
        "vip": bool(data["vip"][i]),
        "signed_up": signed,
        "address": {"city": "Paris" if i % 3 else "Lyon"},
    }
    identities = {"anonymous_id": 1}
    if data["has_email"][i]:
        traits["email"] = f"user{i}@{data['domain'][i]}"
        identities["email"] = 1
    if data["known"][i]:
        identities["user_id"] = 1
    return ProfileState(
        f"profile-{i:07d}",
        1,
        traits,
        {"orders_90d": float(len(counters))},
        identities,
        {(int(day), EVENTS[event]): int(count) for event, day, count in counters},
        series={(int(day), EUR): (int(n), float(a), float(b), float(c)) for day, n, a, b, c in eur},
    )


def load_view(data: dict, n: int) -> tuple[ColumnarView, float, float]:
    before = rss_mb()
    view = ColumnarView(8, capacity=n)
    counters = data["counters"]
    pids, events, days, counts = (counters[c].to_numpy() for c in ("pid", "event", "day", "n"))
    bounds = np.searchsorted(pids, np.arange(n + 1))
    eur = data["eur"]
    eur_columns = [eur[c].to_numpy() for c in ("day", "n", "sum", "min", "max")]
    eur_bounds = np.searchsorted(eur["pid"].to_numpy(), np.arange(n + 1))
    started = time.perf_counter()
    for i in range(n):
        lo, hi = bounds[i], bounds[i + 1]
        mine = list(zip(*(c[eur_bounds[i] : eur_bounds[i + 1]] for c in eur_columns), strict=True))
        view.put(state_of(data, i, list(zip(events[lo:hi], days[lo:hi], counts[lo:hi], strict=False)), mine), NOW)
    return view, time.perf_counter() - started, rss_mb() - before


def profile_blob(state: ProfileState, i: int) -> bytes:
    """The Profile (as the profile service stores and ScanProfiles streams it) of a view state."""
    profile = profile_pb2.Profile(profile_id=state.profile_id, version=1)
    traits = struct_pb2.Struct()
    traits.update(state.traits)  # each Python value as a protobuf Value
    for key, value in traits.fields.items():
        profile.traits[key].value.CopyFrom(value)
    for kind in state.identities:
        profile.identities[f"{kind}:{i}"].CopyFrom(profile_pb2.Identity(type=kind, value=str(i)))
    for (day, event), count in state.counters.items():
        name = (EPOCH + timedelta(days=day)).isoformat()
        profile.daily_counters[f"{name}|{event}"].CopyFrom(profile_pb2.DailyCounter(day=name, event=event, count=count))
    for (day, series_name), (count, summed, low, high) in state.series.items():
        name = (EPOCH + timedelta(days=day)).isoformat()
        profile.daily_series[f"{name}|{series_name}"].CopyFrom(
            profile_pb2.DailySeries(day=name, series=series_name, count=count, sum=summed, min=low, max=high)
        )
    return profile.SerializeToString()


def blobs_of(view: ColumnarView, start: int, stop: int) -> list[tuple[str, bytes]]:
    """The stored Profiles of the view's profiles start to stop (ids as `load_view` gave them)."""
    blobs = []
    for i in range(start, stop):
        state = view.get(f"profile-{i:07d}")
        assert state is not None  # loaded
        blobs.append((state.profile_id, profile_blob(state, i)))
    return blobs


def rebuild_from_protos(view: ColumnarView, sample: int) -> float:
    """Seconds per profile: Profile bytes (as ScanProfiles streams them) to a row."""
    blobs = [blob for _, blob in blobs_of(view, 0, sample)]
    target = ColumnarView(8, capacity=sample)
    started = time.perf_counter()
    for blob in blobs:
        target.put(ProfileState.of_profile(profile_pb2.Profile.FromString(blob)), NOW)
    return (time.perf_counter() - started) / sample


async def rebuild_through_the_profile_service(view: ColumnarView, n: int) -> tuple[float, float, float]:
    """The rebuild a segmentation replica does on start, whole: the profile service in a process
    of its own, its embedded store holding the n profiles, streaming them (ScanProfiles, a page at
    a time) to segmentation's reader in this process, which decodes them into a new view of every
    partition. Seconds, and the CPU seconds of each side."""
    nats_server = NatsServer().start()
    with tempfile.TemporaryDirectory() as folder:
        env = {
            "MOSAIC_NATS_URL": nats_server.url,
            "MOSAIC_DATA_DIR": folder,
            "MOSAIC_LOG_LEVEL": "WARNING",
            "OTEL_TRACES_EXPORTER": "none",
        }
        process, port = _process.start_service("profile_service", env, os.path.join(folder, "profile.log"))
        reader = ProfileReader(f"127.0.0.1:{port}", SecuritySettings())
        try:
            await _process.wait_serving(reader.channel, process, "profile")
            db = sqlite3.connect(os.path.join(folder, "profile.db"), timeout=60)
            for start in range(0, n, 50_000):  # the profiles, written as the service's own store keeps them
                rows = [(pid, 1, blob, "{}") for pid, blob in blobs_of(view, start, min(n, start + 50_000))]
                with db:
                    db.executemany(
                        "INSERT INTO profile_latest (profile_id, version, state, aggregates) VALUES (?, ?, ?, ?)", rows
                    )
            db.close()
            target = ColumnarView(8, capacity=n)
            service_cpu, started, cpu = _process.cpu_seconds(process.pid), time.perf_counter(), time.process_time()
            count = await reader.rebuild(target, frozenset(range(8)), set())
            seconds = time.perf_counter() - started
            assert count == n == len(target), (count, n, len(target))
            return seconds, time.process_time() - cpu, _process.cpu_seconds(process.pid) - service_cpu
        finally:
            await reader.close()
            process.terminate()
            process.wait(timeout=30)
            nats_server.close()


def rfm_view(n: int, seed: int = 5) -> ColumnarView:
    """The commerce computed traits of n profiles (as the profile service keeps them)."""
    rng = np.random.default_rng(seed)
    view = ColumnarView(8, capacity=n)
    customer = rng.random(n) < 0.7
    days = rng.integers(0, 730, n)
    orders = rng.geometric(0.35, n).astype(float)
    value = np.round(orders * rng.gamma(2, 30, n), 2)
    for i in range(n):
        computed: dict[str, Any] = {}
        if customer[i]:
            last = (EPOCH + timedelta(days=TODAY - int(days[i]))).isoformat() + "T12:00:00Z"
            computed = {"orders": float(orders[i]), "lifetime_value": float(value[i]), "last_order_at": last}
        view.put(ProfileState(f"profile-{i:07d}", 1, computed=computed), NOW)
    return view


def rfm_figures(n: int) -> None:
    started = time.perf_counter()
    view = rfm_view(n)
    loaded = time.perf_counter() - started
    traits = rfm.DEFAULT_TRAITS

    def recompute() -> rfm.RfmModel:
        customers, recency, frequency, monetary = rfm.edges([local_summary(view, traits, NOW)])
        return rfm.RfmModel(traits, 1, NOW, customers, recency, frequency, monetary)

    ms = timed(recompute)
    model = recompute()
    print(
        f"RFM: {model.customers:,} customers of {n:,} profiles (view loaded in {loaded:.1f} s); recompute (measures,"
        f" summary, edges) {ms:.1f} ms, median of 5; edges R {model.recency} F {model.frequency} M {model.monetary}"
    )
    named = {s: compiler.compile_all({s: compiler.definition_of(text=t)[1]}, model)[s] for s, _, t in rfm.NAMED}
    total = 0
    for segment_id, compiled in named.items():
        count = int(view.evaluate(compiled.expression, NOW).sum())
        total += count
        ms = timed(lambda compiled=compiled: estimate(view, compiled.expression))
        print(f"  {ms:7.1f} ms  count {count:9,}  {segment_id}")
    print(
        f"  the named segments hold {total:,} customers: {'every' if total == model.customers else 'NOT every'} one once"
    )
    dues = [due_function(compiled.expression) for compiled in named.values()]
    sample = view.owned_ids()[:10000]
    started = time.process_time()  # CPU, robust to the machine's load
    for pid in sample:
        state = view.get(pid)
        assert state is not None  # loaded
        min((d for due in dues if (d := due(state, NOW)) is not None), default=None)
    per = (time.process_time() - started) / len(sample)
    print(
        f"  a profile's next timer over the 11 (state from the view, each segment's due): {per * 1e6:.1f} us CPU,"
        f" so renewing every timer after new edges is {per * n:.1f} s of one core for {n:,} profiles"
    )


def estimate(view: ColumnarView, expression) -> tuple[int, list[str]]:
    """What Estimate does: one evaluation, the count and a sample of 10."""
    mask = view.evaluate(expression, NOW)
    return int(mask.sum()), view.profile_ids(mask, 10)


def timed(work, repeat: int = 5) -> float:
    """Median milliseconds of `repeat` runs (after one warm-up)."""
    work()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def write_tables(data: dict, n: int, folder: Path) -> None:
    signed = [
        datetime.fromtimestamp(int(d) * DAY + 9.5 * 3600, timezone.utc).replace(tzinfo=None)
        for d in data["signed_up_day"]
    ]
    pl.DataFrame(
        {
            "pid": np.arange(n),
            "plan": data["plan"],
            "country": data["country"],
            "age": data["age"],
            "ltv": data["ltv"],
            "vip": data["vip"],
            "has_email": data["has_email"],
            "known": data["known"],
            "signed_up": signed,
            "email": [
                f"user{i}@{d}" if e else None
                for i, (d, e) in enumerate(zip(data["domain"], data["has_email"], strict=False))
            ],
        }
    ).write_parquet(folder / "profiles.parquet")
    data["counters"].with_columns(
        pl.col("event").replace_strict(dict(enumerate(EVENTS)), return_dtype=pl.String)
    ).write_parquet(folder / "counters.parquet")
    data["eur"].write_parquet(folder / "eur_orders.parquet")


def duckdb_queries(today: int) -> list[str]:
    def count(event: str, days: int) -> str:
        return (
            f"(SELECT pid, sum(n) AS n FROM counters WHERE event = '{event}' AND day > {today - days}"
            f" AND day <= {today} GROUP BY pid)"
        )

    return [
        "SELECT count(*), min(pid) FROM profiles WHERE plan = 'pro'",
        f"SELECT count(*) FROM profiles p JOIN {count('Order Completed', 30)} o USING (pid)"
        " WHERE p.plan = 'pro' AND o.n >= 2",
        "SELECT count(*) FROM profiles WHERE country IN ('FR', 'DE', 'ES') AND ltv > 500 AND has_email",
        f"SELECT count(*) FROM profiles p JOIN {count('Order Completed', 30)} o USING (pid)"
        f" LEFT JOIN {count('Email Opened', 14)} e USING (pid)"
        " WHERE (p.plan IN ('pro', 'team') OR p.ltv BETWEEN 100 AND 1000) AND o.n >= 1 AND coalesce(e.n, 0) = 0",
        f"SELECT count(*) FROM profiles p JOIN {count('page', 7)} v USING (pid) WHERE p.email LIKE '%@gmail.com'"
        " AND p.signed_up < now()::TIMESTAMP - INTERVAL 30 DAY AND v.n >= 3 AND p.known",
        f"SELECT count(*) FROM profiles p JOIN (SELECT pid, sum(sum) AS s FROM eur_orders WHERE day > {today - 30}"
        f" AND day <= {today} GROUP BY pid) o USING (pid) WHERE p.plan IN ('pro', 'team') AND o.s > 100",
    ]


def polars_queries(profiles: pl.LazyFrame, counters: pl.LazyFrame, eur: pl.LazyFrame, today: int) -> list:
    def count(event: str, days: int) -> pl.LazyFrame:
        return (
            counters.filter((pl.col("event") == event) & (pl.col("day") > today - days) & (pl.col("day") <= today))
            .group_by("pid")
            .agg(pl.col("n").sum())
        )

    cutoff = datetime.fromtimestamp(NOW - 30 * DAY, timezone.utc).replace(tzinfo=None)
    return [
        profiles.filter(pl.col("plan") == "pro").select(pl.len()),
        profiles.filter(pl.col("plan") == "pro")
        .join(count("Order Completed", 30), on="pid")
        .filter(pl.col("n") >= 2)
        .select(pl.len()),
        profiles.filter(
            pl.col("country").is_in(["FR", "DE", "ES"]) & (pl.col("ltv") > 500) & pl.col("has_email")
        ).select(pl.len()),
        profiles.filter(pl.col("plan").is_in(["pro", "team"]) | pl.col("ltv").is_between(100, 1000))
        .join(count("Order Completed", 30), on="pid")
        .filter(pl.col("n") >= 1)
        .join(count("Email Opened", 14), on="pid", how="anti")
        .select(pl.len()),
        profiles.filter(pl.col("email").str.ends_with("@gmail.com") & (pl.col("signed_up") < cutoff) & pl.col("known"))
        .join(count("page", 7), on="pid")
        .filter(pl.col("n") >= 3)
        .select(pl.len()),
        profiles.filter(pl.col("plan").is_in(["pro", "team"]))
        .join(
            eur.filter((pl.col("day") > today - 30) & (pl.col("day") <= today))
            .group_by("pid")
            .agg(pl.col("sum").sum()),
            on="pid",
        )
        .filter(pl.col("sum") > 100)
        .select(pl.len()),
    ]


async def handler_rate(batch: int, count: int = 2000) -> tuple[float, float, float]:
    """The profile.updated handler fed `count` updates `batch` at a time, as the consumer hands
    them over (1: its fallback, one message at a time): updates/s, and p50 and p99 per batch."""
    nats = NatsServer().start()
    folder = tempfile.mkdtemp(prefix="bench-seg-")
    settings = PlatformSettings.from_env(
        "segmentation", {"MOSAIC_AUTH": "off", "MOSAIC_NATS_URL": nats.url, "MOSAIC_DATA_DIR": folder}
    )
    store = await open_store(settings)
    bus = await Bus.connect(settings.nats_url, "segmentation", settings.partitions)
    await bus.ensure_streams()
    for index, text in enumerate(DEFINITIONS):
        definition, expression = compiler.definition_of(text=text)
        await store.create(
            segment_pb2.Segment(
                segment_id=f"s{index}", name=text, definition=definition, expression=expression, revision=1
            )
        )
    memberships = Memberships(store, SegmentCatalog(store), ColumnarView(settings.partitions), bus)
    day = datetime.fromtimestamp(NOW, timezone.utc).strftime("%Y-%m-%d")
    updates = []
    for i in range(count):
        update = profile_updated_pb2.ProfileUpdated(profile_id=f"u{i % 500}", version=i // 500 + 1)
        update.changes.add(path="traits.plan", new_value=struct_pb2.Value(string_value=("pro", "free")[i % 2]))
        update.changes.add(
            path=f"daily_counters.{day}|Order Completed", new_value=struct_pb2.Value(number_value=i // 500 + 1)
        )
        updates.append((update, Delivery("profile.updated.0", 0, i + 1, 1, "")))
    latencies = []
    started = time.perf_counter()
    for first in range(0, count, batch):
        begun = time.perf_counter()
        await memberships.updated_batch(updates[first : first + batch])
        latencies.append((time.perf_counter() - begun) * 1000)
    elapsed = time.perf_counter() - started
    await bus.close()
    await store.close()
    nats.close()
    latencies.sort()
    return count / elapsed, statistics.median(latencies), latencies[int(len(latencies) * 0.99)]


def start_service(nats_url: str, folder: str) -> tuple[subprocess.Popen, int]:
    """The segmentation service as a deployment runs it: a process of its own (one replica,
    every partition); its gRPC port."""
    env = {
        "MOSAIC_NATS_URL": nats_url,
        "MOSAIC_DATA_DIR": folder,
        "MOSAIC_GRACE_SECONDS": "1",
        "MOSAIC_LOG_LEVEL": "WARNING",
        "OTEL_TRACES_EXPORTER": "none",
    }
    return _process.start_service("segmentation_service", env, os.path.join(folder, "segmentation.log"))


class Feed:
    """The bench's side, in this process: profile.updated published on its own connection and
    segment.membership watched on another, each update's latency from its publish to the
    membership change it caused."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.sent: dict[tuple[str, int], float] = {}
        self.latencies: list[float] = []
        self.versions: dict[str, int] = {}

    def received(self, change: segment_membership_pb2.SegmentMembershipChanged) -> None:
        begun = self.sent.pop((change.profile_id, change.profile_version), None)
        if begun is not None:
            self.latencies.append((time.perf_counter() - begun) * 1000)

    async def publish(self, profile_ids: list[str]) -> None:
        """The next version of each profile, moving it in or out of "pro"."""
        batch = []
        for pid in profile_ids:
            version = self.versions[pid] = self.versions.get(pid, 0) + 1
            update = profile_updated_pb2.ProfileUpdated(profile_id=pid, version=version)
            update.changes.add(
                path="traits.plan", new_value=struct_pb2.Value(string_value=("free", "pro")[version % 2])
            )
            batch.append((pid, update.SerializeToString(), f"{pid}:{version}"))
            self.sent[(pid, version)] = time.perf_counter()
        await self.bus.publish_many(topics.PROFILE_UPDATED, batch)


async def membership_latency(
    rates: tuple[int, ...], seconds: float = 5.0
) -> list[tuple[int, int, float, float, float, float, float]]:
    """The service, in a process of its own, consuming profile.updated at each rate, every
    update a transition: for each, how many were received and at what rate, p50 and p99 from
    profile.updated published to segment.membership received, and the service's CPU per update."""
    server = NatsServer().start()
    folder = tempfile.mkdtemp(prefix="bench-seg-")
    process, port = start_service(server.url, folder)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    bus = await Bus.connect(server.url, "bench", 8)
    watcher = await nats_client.connect(server.url)
    results = []
    try:
        await _process.wait_serving(channel, process, "segmentation")
        definition, _ = compiler.definition_of(text='traits.plan = "pro"')
        await SegmentationServiceStub(channel).CreateSegment(
            pb.CreateSegmentRequest(segment=segment_pb2.Segment(segment_id="pro", name="pro", definition=definition))
        )
        feed = Feed(bus)

        async def received(msg) -> None:
            feed.received(segment_membership_pb2.SegmentMembershipChanged.FromString(msg.data))

        await watcher.subscribe(topics.SEGMENT_MEMBERSHIP.wildcard, cb=received)
        # Until a profile of each partition moves: the leases are held and the catalog has the segment.
        probes = {topics.partition_of(f"probe{i}", 8): f"probe{i}" for i in range(200)}
        deadline = time.monotonic() + 60
        while True:
            feed.sent.clear()
            await feed.publish(sorted(probes.values()))
            await asyncio.sleep(1.0)
            if not feed.sent:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the service publishes no segment.membership")
        feed.latencies.clear()
        cpu = _process.cpu_seconds(process.pid)
        await asyncio.sleep(3.0)
        idle = (_process.cpu_seconds(process.pid) - cpu) / 3.0
        print(f"the service (its own process) idle: {idle * 100:.1f}% of a core", flush=True)
        people = 2000
        for rate in rates:
            tick = LATENCY_TICK
            total, per_tick = int(rate * seconds), int(rate * tick)
            load = os.getloadavg()[0]
            cpu = _process.cpu_seconds(process.pid)
            started = time.perf_counter()
            for first in range(0, total, per_tick):
                await feed.publish([f"q{i % people}" for i in range(first, min(total, first + per_tick))])
                await asyncio.sleep(max(0.0, started + (first + per_tick) / rate - time.perf_counter()))
            deadline = time.perf_counter() + 60
            while len(feed.latencies) < total and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            used = _process.cpu_seconds(process.pid) - cpu
            latencies = sorted(feed.latencies)
            feed.latencies.clear()
            feed.sent.clear()
            if not latencies:
                results.append((rate, 0, 0.0, 0.0, 0.0, 0.0, load))
                continue
            results.append(
                (
                    rate,
                    len(latencies),
                    len(latencies) / elapsed,
                    statistics.median(latencies),
                    latencies[int(len(latencies) * 0.99)],
                    used * 1e6 / total,
                    (load + os.getloadavg()[0]) / 2,
                )
            )
            await asyncio.sleep(1.0)  # the service idle between rates
    finally:
        await watcher.close()
        await bus.close()
        await channel.close()
        process.terminate()
        process.wait()
        server.close()
    return results


def print_latency(results: list[tuple[int, int, float, float, float, float, float]]) -> None:
    for rate, count, achieved, p50, p99, cpu_us, load in results:
        print(
            f"the service (its own process) fed {rate:,} profile.updated/s, each a transition: {count:,} received"
            f" at {achieved:,.0f}/s; profile.updated published -> segment.membership received p50 {p50:.1f} ms,"
            f" p99 {p99:.1f} ms; the service's CPU {cpu_us:.0f} us an update (load {load:.1f})"
        )


async def main() -> None:
    if ONLY == "latency":
        print_latency(await membership_latency(LATENCY_RATES, LATENCY_SECONDS))
        return
    n = PROFILES
    print(
        f"synthesizing {n:,} profiles (traits, identities, 90 days of counters of {len(EVENTS)} events)...", flush=True
    )
    data = synthesize(n)
    view, load_seconds, view_mb = load_view(data, n)
    index = sys.getsizeof(view.rows) + sys.getsizeof(view.ids) + sum(sys.getsizeof(k) for k in view.rows)
    print(
        f"view: {n:,} profiles loaded in {load_seconds:.1f} s ({n / load_seconds:,.0f}/s); held: columns"
        f" {view.nbytes() / n:,.0f} B + id index {index / n:,.0f} B = {(view.nbytes() + index) / n:,.0f} B per profile"
        f" (resident set grew {view_mb:,.0f} MB; the allocator reuses what synthesis freed)"
    )
    per = rebuild_from_protos(view, min(n, 20000))
    print(f"rebuild from Profile protos (decode, state, row) {per * 1e6:.0f} us per profile")
    seconds, ours, theirs = await rebuild_through_the_profile_service(view, n)
    print(
        f"rebuild through the profile service (its process, embedded store; ScanProfiles of every partition"
        f" in pages): {n:,} profiles in {seconds:.1f} s ({n / seconds:,.0f}/s; {seconds / n * 1e6:.0f} us each),"
        f" CPU {ours / n * 1e6:.0f} us a profile here and {theirs / n * 1e6:.0f} us in the profile service"
    )
    compiled = [compiler.compile_all({"s": compiler.definition_of(text=t)[1]})["s"] for t in DEFINITIONS]
    with tempfile.TemporaryDirectory() as folder:
        write_tables(data, n, Path(folder))
        con = duckdb.connect()
        con.execute(f"CREATE TABLE profiles AS SELECT * FROM read_parquet('{folder}/profiles.parquet')")
        con.execute(f"CREATE TABLE counters AS SELECT * FROM read_parquet('{folder}/counters.parquet')")
        con.execute(f"CREATE TABLE eur_orders AS SELECT * FROM read_parquet('{folder}/eur_orders.parquet')")
        profiles = pl.read_parquet(f"{folder}/profiles.parquet").lazy()
        counters = pl.read_parquet(f"{folder}/counters.parquet").lazy()
        eur_orders = pl.read_parquet(f"{folder}/eur_orders.parquet").lazy()
    print(
        "Estimate (count + sample of 10) against DuckDB and Polars over the same data, median of 5"
        " (and the view's first, which makes the string tests it keeps):"
    )
    for text, definition, query, lazy in zip(
        DEFINITIONS,
        compiled,
        duckdb_queries(TODAY),
        polars_queries(profiles, counters, eur_orders, TODAY),
        strict=False,
    ):
        started = time.perf_counter()
        mask = view.evaluate(definition.expression, NOW)  # the first: string tests are made, then kept
        first = (time.perf_counter() - started) * 1000
        ours = timed(lambda definition=definition: estimate(view, definition.expression))
        theirs = timed(lambda query=query: con.execute(query).fetchall())
        polars_ms = timed(lambda lazy=lazy: lazy.collect())
        agree = int(mask.sum()) == con.execute(query).fetchall()[0][0]
        print(
            f"  {ours:7.1f} ms (first {first:6.1f})  duckdb {theirs:7.1f} ms ({ours / theirs:4.1f}x)"
            f"  polars {polars_ms:7.1f} ms  count {int(mask.sum()):,} {'=' if agree else '!='} duckdb   {text}"
        )
    rfm_figures(n)
    rng = np.random.default_rng(1)
    picks = [f"profile-{i:07d}" for i in rng.integers(0, n, 5000)]
    matchers = [predicate(definition.expression) for definition in compiled]  # as the catalog holds them
    started = time.perf_counter()
    for pid in picks:
        state = view.get(pid)
        assert state is not None  # loaded
        for matches in matchers:
            matches(state, NOW, DEFAULT_POLICY)
    elapsed = time.perf_counter() - started
    print(
        f"incremental: state from the view + {len(compiled)} definitions:"
        f" {len(picks) * len(compiled) / elapsed:,.0f} evaluations/s"
        f" ({elapsed / len(picks) * 1e6:.0f} us per profile)"
    )
    for batch in (1, 64):
        rate, p50, p99 = await handler_rate(batch)
        print(
            f"profile.updated handler end to end (SQLite store, real nats-server, {len(DEFINITIONS)} segments), {batch} at a time:"
            f" {rate:,.0f} updates/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms per call"
        )
    print_latency(await membership_latency(LATENCY_RATES, LATENCY_SECONDS))
