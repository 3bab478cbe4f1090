"""Direct-to-bucket uploads (issue 10) beside streaming ``POST /v1/files`` and beside the
floor of ingestion, on SeaweedFS, with the CPU of every process.

    .venv/bin/python -m bench.direct [--sizes 256] [--runs 5] [--concurrent 16]
        [--concurrent-size 256] [--concurrent-rounds 2] [--quick] [--output FILE]

For every size and run, one after the other and each on fresh bytes: clamd alone from
memory; a streaming POST; then the direct flow — the intent (``POST /v1/uploads``), the
presigned PUT straight to SeaweedFS (aiohttp, the URL and headers as issued), the floor
(the benchmark reads that staged object back from SeaweedFS into clamd INSTREAM itself,
the least any ingestion must do) and the completion (``POST .../complete``, answered once
fileshare has read the object through its hashers and clamd and promoted it: ``clean``).
Then rounds of ``--concurrent`` objects staged by presigned PUTs at once, the floor for all
of them at once, and all of their completions at once. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: python bench/direct.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from yarl import URL

from bench import report
from bench import run as base
from bench.clients import (
    FileshareClient,
    MemoryBody,
    MiB,
    S3Direct,
    metric_delta,
    scan_stream,
    stage_key,
)
from bench.procs import REPO, CpuMeter, FileshareServer
from bench.run import API_KEY, MAX_UPLOAD, OP_TIMEOUT, STAGES, Results, Timer, fresh, progress
from fileshare.scan.clamd import ClamdScanner
from fileshare.storage.base import DIRECT_PREFIX
from tests.servers import Clamd, SeaweedS3, clamd_command

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

SECTION = "direct"
#: The phases of a round of objects at once.
PHASES = ("put", "floor", "ingest")
RESULTS = REPO / "bench" / "results" / "direct.json"
CONTENT_TYPE = "application/octet-stream"
#: The reconciler would ingest staged objects before the benchmark completes them (a round
#: every 60 s by default): the benchmark measures the completion, so it never comes.
RECONCILE_INTERVAL = 86400
RECEIVED = "fileshare_upload_received_bytes_total"

SCENARIOS: list[tuple[str, str]] = [
    ("b", "(b)  clamd INSTREAM alone, from memory"),
    ("r", "(r)  floor: GET staged object -> clamd"),
    ("d", "(d)  streaming POST /v1/files"),
    ("n", "(n)  POST /v1/uploads (the intent)"),
    ("p", "(p)  presigned PUT to SeaweedFS"),
    ("i", "(i)  ingestion: POST complete -> clean"),
    ("t", "(t)  direct total: (n) + (p) + (i)"),
]


@dataclass
class Plan:
    sizes: list[int]
    runs: dict[int, int]
    #: Objects staged, then completed, at once (0: no concurrency rounds).
    concurrent: int = 16
    concurrent_size: int = 256 * MiB
    concurrent_rounds: int = 2
    #: Declare the sha-256 in the intent (the PUT then carries x-amz-checksum-sha256).
    sha256: bool = False
    #: Warm up at the smallest size and at 16 MiB first (not recorded).
    warm_up: bool = True

    @classmethod
    def make(cls, args: argparse.Namespace) -> Plan:
        sizes = [int(s) * MiB for s in args.sizes.split(",")]
        runs = args.runs or (1 if args.quick else 5)
        return cls(
            sizes=sizes,
            runs=dict.fromkeys(sizes, runs),
            concurrent=0 if args.no_concurrency else args.concurrent,
            concurrent_size=int(args.concurrent_size) * MiB,
            concurrent_rounds=args.concurrent_rounds or (1 if args.quick else 2),
            sha256=args.sha256,
        )


# ---------------------------------------------------------------------- the client


class DirectClient:
    """The direct flow as a client makes it: the intent from fileshare, the PUT to the
    store with the URL and headers as issued, the completion from fileshare."""

    def __init__(self, http: aiohttp.ClientSession, fs: FileshareClient) -> None:
        self.http = http
        self.fs = fs

    async def intent(self, data: bytes, *, sha256: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"name": "bench.bin", "contentType": CONTENT_TYPE}
        body["size"] = len(data)
        if sha256:
            body["sha256"] = hashlib.sha256(data).hexdigest()
        async with self.http.post(
            f"{self.fs.base_url}/v1/uploads", json=body, headers=self.fs.headers
        ) as resp:
            answer = await resp.read()
            if resp.status != 201:
                raise RuntimeError(f"POST /v1/uploads: HTTP {resp.status} {answer[:300]!r}")
            issued: dict[str, Any] = json.loads(answer)
            return issued

    async def put(self, issued: dict[str, Any], data: bytes) -> None:
        upload = issued["upload"]
        # encoded=True: the signature covers the query exactly as presigned.
        async with self.http.request(
            upload["method"],
            URL(upload["url"], encoded=True),
            data=MemoryBody(data, CONTENT_TYPE),
            headers=upload["headers"],
        ) as resp:
            answer = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"presigned PUT: HTTP {resp.status} {answer[:300]!r}")

    async def complete(self, issued: dict[str, Any]) -> dict[str, Any]:
        """POST complete; on 202 (another worker holds it) poll the status until it has
        an outcome. Raises unless the outcome is ``clean``."""
        async with self.http.post(issued["complete"], headers=self.fs.headers) as resp:
            answer = await resp.read()
            if resp.status not in (200, 202):
                raise RuntimeError(f"POST complete: HTTP {resp.status} {answer[:300]!r}")
            done: dict[str, Any] = json.loads(answer)
        deadline = time.monotonic() + OP_TIMEOUT
        while done["state"] == "pending":
            if time.monotonic() > deadline:
                raise RuntimeError(f"upload {issued['id']} still pending")
            await asyncio.sleep(0.05)  # polling the server's state, with a deadline
            async with self.http.get(issued["status"], headers=self.fs.headers) as resp:
                done = json.loads(await resp.read())
        if done["state"] != "clean":
            raise RuntimeError(f"upload {issued['id']}: {done['state']} {done.get('detail')}")
        return done


@dataclass
class Context:
    plan: Plan
    results: Results
    s3: S3Direct
    scanner: ClamdScanner
    fileshare: FileshareClient
    client: DirectClient
    timer: Timer
    unscanned: str
    #: Not ingested twice: completions left no staging object and read each byte once.
    checks: dict[str, int] = field(default_factory=dict)

    def staged_key(self, issued: dict[str, Any]) -> str:
        return f"{DIRECT_PREFIX}{issued['id']}"


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu() -> dict[str, float]:
    """The whole machine's CPU seconds so far (``/proc/stat``), summed over cores: busy,
    idle, iowait (idle while a disk read or write was outstanding) and steal (taken by
    the hypervisor for other guests)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    ticks = {
        "busy": user + nice + system + irq + softirq,
        "idle": idle,
        "iowait": iowait,
        "steal": steal,
    }
    return {k: v / _CLOCK_TICKS for k, v in ticks.items()}


def machine_delta(before: dict[str, float]) -> dict[str, float]:
    after = machine_cpu()
    return {k: round(after[k] - before[k], 2) for k in before}


class MachineMeter(CpuMeter):
    """``CpuMeter`` plus the whole machine's busy, iowait and steal seconds (keys
    ``machine_*``): other work on a shared machine shows as busy time no measured process
    spent."""

    def start(self) -> None:
        self._machine = machine_cpu()
        super().start()

    def stop(self) -> dict[str, float]:
        cpu = super().stop()
        machine = machine_delta(self._machine)
        return cpu | {f"machine_{k}": machine[k] for k in ("busy", "iowait", "steal")}


def _sum_cpu(*cpus: dict[str, float]) -> dict[str, float]:
    return {name: round(sum(c.get(name, 0.0) for c in cpus), 3) for name in cpus[0]}


async def _server_stages(
    fs: FileshareClient, op: Awaitable[Any], seconds_of: Callable[[], float]
) -> tuple[Any, dict[str, float], float]:
    """Run ``op`` (timed by the caller); fileshare's own stages and bytes received."""
    keys = [stage_key("sum", s) for s in STAGES]
    before = await fs.metrics()
    result = await op
    after = await fs.metrics()
    stages = {k.split('"')[1] + "_s": v for k, v in metric_delta(before, after, keys).items()}
    stages["other_s"] = round(seconds_of() - sum(stages.values()), 4)
    received = metric_delta(before, after, [RECEIVED])[RECEIVED]
    return result, stages, received


# ------------------------------------------------------------------- one at a time


async def streaming_post(ctx: Context, size: int, record: bool) -> None:
    """(d): the bytes through fileshare, as ``bench.run``'s (d)."""
    data = fresh(size)
    timed: dict[str, Any] = {}

    async def upload() -> tuple[int, Any]:
        (status, body), seconds, cpu = await ctx.timer(ctx.fileshare.upload(data))
        timed.update(seconds=seconds, cpu=cpu)
        return status, body

    (status, body), stages, _ = await _server_stages(
        ctx.fileshare, upload(), lambda: float(timed["seconds"])
    )
    if status != 201 or body.get("sha256") != hashlib.sha256(data).hexdigest():
        raise RuntimeError(f"(d) HTTP {status}, sha256 {body.get('sha256')}")
    await ctx.fileshare.delete(body["id"])
    if record:
        run = base._run(timed["seconds"], timed["cpu"], server_stages=stages)
        ctx.results.add(SECTION, size, "d", run)


async def direct_flow(ctx: Context, size: int, record: bool) -> None:
    """(n), (p), (r), (i) on one fresh object, and (t) = (n) + (p) + (i)."""
    data = fresh(size)
    sha = hashlib.sha256(data).hexdigest()
    issued, n_s, n_cpu = await ctx.timer(ctx.client.intent(data, sha256=ctx.plan.sha256))
    _, p_s, p_cpu = await ctx.timer(ctx.client.put(issued, data))
    key = ctx.staged_key(issued)
    # The floor: the same staged object, read back by the benchmark straight into clamd.
    _, r_s, r_cpu = await ctx.timer(scan_stream(ctx.scanner, ctx.s3.read(ctx.unscanned, key, MiB)))
    timed: dict[str, Any] = {}

    async def complete() -> dict[str, Any]:
        done, seconds, cpu = await ctx.timer(ctx.client.complete(issued))
        timed.update(seconds=seconds, cpu=cpu)
        return done

    done, stages, received = await _server_stages(
        ctx.fileshare, complete(), lambda: float(timed["seconds"])
    )
    i_s, i_cpu = timed["seconds"], timed["cpu"]
    _check_ingested(ctx, done, sha, size, received)
    if await ctx.s3.exists(ctx.unscanned, key):
        ctx.checks["staged_left"] = ctx.checks.get("staged_left", 0) + 1
    await ctx.fileshare.delete(done["fileId"])
    if record:
        add = ctx.results.add
        add(SECTION, size, "n", base._run(n_s, n_cpu))
        add(SECTION, size, "p", base._run(p_s, p_cpu))
        add(SECTION, size, "r", base._run(r_s, r_cpu))
        add(SECTION, size, "i", base._run(i_s, i_cpu, server_stages=stages, read_bytes=received))
        total = base._run(n_s + p_s + i_s, _sum_cpu(n_cpu, p_cpu, i_cpu))
        add(SECTION, size, "t", total)


def _check_ingested(
    ctx: Context, done: dict[str, Any], sha: str, size: int, received: float | None
) -> None:
    if done.get("sha256") not in (None, sha) or done.get("size") != size:
        raise RuntimeError(f"ingested {done.get('size')} bytes, sha256 {done.get('sha256')}")
    ctx.checks["ingested"] = ctx.checks.get("ingested", 0) + 1
    if received is not None and received != size:
        # Read more than once (or not at all: a dedup, which fresh bytes never are).
        ctx.checks["read_not_once"] = ctx.checks.get("read_not_once", 0) + 1


# --------------------------------------------------------------------- all at once


async def staged_round(ctx: Context, index: int) -> dict[str, Any]:
    """``concurrent`` objects: PUTs at once, the floor at once, then completions at once."""
    n, size = ctx.plan.concurrent, ctx.plan.concurrent_size
    blobs = [fresh(size) for _ in range(n)]
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    issued = [await ctx.client.intent(b, sha256=ctx.plan.sha256) for b in blobs]
    out: dict[str, Any] = {"round": index}

    def rate(name: str, seconds: float, cpu: dict[str, float], machine: dict[str, float]) -> None:
        out[name] = {
            "seconds": round(seconds, 3),
            "objects_per_s": round(n / seconds, 2),
            "mib_per_s": round(n * size / MiB / seconds, 1),
            "cpu": cpu,
            "machine": machine,
        }

    puts = asyncio.gather(*(ctx.client.put(i, b) for i, b in zip(issued, blobs, strict=True)))
    mark = machine_cpu()
    _, seconds, cpu = await ctx.timer(puts)
    rate("put", seconds, cpu, machine_delta(mark))
    del blobs
    keys = [ctx.staged_key(i) for i in issued]
    floors = asyncio.gather(
        *(scan_stream(ctx.scanner, ctx.s3.read(ctx.unscanned, k, MiB)) for k in keys)
    )
    mark = machine_cpu()
    _, seconds, cpu = await ctx.timer(floors)
    rate("floor", seconds, cpu, machine_delta(mark))
    before = await ctx.fileshare.metrics()
    completes = asyncio.gather(*(ctx.client.complete(i) for i in issued))
    mark = machine_cpu()
    done, seconds, cpu = await ctx.timer(completes)
    machine = machine_delta(mark)
    after = await ctx.fileshare.metrics()
    rate("ingest", seconds, cpu, machine)
    received = metric_delta(before, after, [RECEIVED])[RECEIVED]
    # fileshare's stages, as a mean per upload (each upload's transfer, verdict wait, ...).
    sums = metric_delta(before, after, [stage_key("sum", s) for s in STAGES])
    out["ingest"]["server_stages_mean"] = {
        k.split('"')[1] + "_s": round(v / n, 3) for k, v in sums.items()
    }
    for answer, sha in zip(done, digests, strict=True):
        _check_ingested(ctx, answer, sha, size, None)
    if received != n * size:
        ctx.checks["read_not_once"] = ctx.checks.get("read_not_once", 0) + 1
    out["ingest"]["read_bytes"] = received
    for key in keys:
        if await ctx.s3.exists(ctx.unscanned, key):
            ctx.checks["staged_left"] = ctx.checks.get("staged_left", 0) + 1
    for answer in done:
        await ctx.fileshare.delete(answer["fileId"])
    return out


# ------------------------------------------------------------------------- driver


@dataclass
class Buckets:
    unscanned: str
    permanent: str

    @classmethod
    def fresh(cls) -> Buckets:
        """Names no other run uses: the smoke test runs on the test session's SeaweedFS."""
        tag = uuid.uuid4().hex[:10]
        return cls(f"bdirect-{tag}-unscanned", f"bdirect-{tag}-permanent")


async def measure(
    plan: Plan,
    results: Results,
    clamd: Clamd,
    seaweed: SeaweedS3,
    fs: FileshareServer,
    buckets: Buckets,
) -> dict[str, int]:
    config = AioConfig(
        region_name=seaweed.region,
        signature_version="s3v4",
        max_pool_connections=64,
        s3={"payload_signing_enabled": False, "addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 3},
    )
    client_cm = get_session().create_client(
        "s3",
        endpoint_url=seaweed.endpoint,
        region_name=seaweed.region,
        aws_access_key_id=seaweed.access_key,
        aws_secret_access_key=seaweed.secret_key,
        config=config,
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=OP_TIMEOUT)
    connector = aiohttp.TCPConnector(limit=64)
    async with (
        client_cm as client,
        aiohttp.ClientSession(timeout=timeout, connector=connector) as http,
    ):
        s3: S3Client = client
        pids = {"bench": os.getpid(), "fileshare": fs.pid, "seaweedfs": seaweed.pid}
        pids["clamd"] = clamd.pid
        fileshare = FileshareClient(http, fs.url, API_KEY)
        ctx = Context(
            plan=plan,
            results=results,
            s3=S3Direct(s3, part_size=base.PART_SIZE, parts_in_flight=base.PARTS_IN_FLIGHT),
            scanner=base._scanner(clamd),
            fileshare=fileshare,
            client=DirectClient(http, fileshare),
            timer=Timer(MachineMeter(pids)),
            unscanned=buckets.unscanned,
        )
        memory = base.S3Context(
            plan=base.Plan(False, plan.sizes, plan.runs, [], {}, 0),
            results=results,
            direct=ctx.s3,
            scanner=ctx.scanner,
            fileshare=fileshare,
            fileshare_pid=fs.pid,
            timer=ctx.timer,
        )
        units: list[tuple[str, Callable[[int, bool], Awaitable[None]]]] = [
            ("b", lambda size, rec: base.clamd_alone(memory, SECTION, size, rec)),
            ("d", lambda size, rec: streaming_post(ctx, size, rec)),
            ("n/p/r/i", lambda size, rec: direct_flow(ctx, size, rec)),
        ]
        if plan.warm_up:
            await base._run_units(SECTION, plan.sizes, plan.runs, units, results)
        else:
            for size in plan.sizes:
                for _ in range(plan.runs[size]):
                    for _name, unit in units:
                        await unit(size, True)
        rounds = []
        for index in range(plan.concurrent_rounds if plan.concurrent else 0):
            progress(
                f"[{SECTION}] {plan.concurrent} x {report.size_label(plan.concurrent_size)} "
                f"staged, round {index + 1}/{plan.concurrent_rounds}"
            )
            found = await staged_round(ctx, index)
            progress(
                "  "
                + ", ".join(
                    f"{k} {found[k]['seconds']:.1f} s ({found[k]['mib_per_s']:.0f} MiB/s)"
                    for k in PHASES
                )
            )
            rounds.append(found)
        if rounds:
            results.concurrency = {
                "objects": plan.concurrent,
                "size": plan.concurrent_size,
                "rounds": rounds,
            }
        async for key in _keys(s3, buckets.unscanned):
            ctx.checks["unscanned_left"] = ctx.checks.get("unscanned_left", 0) + 1
            progress(f"left in the unscanned bucket: {key}")
        return ctx.checks


async def _keys(s3: S3Client, bucket: str) -> Any:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    async for page in pages:
        for item in page.get("Contents", []):
            yield item["Key"]


def fileshare_settings(clamd: Clamd, seaweed: SeaweedS3, buckets: Buckets) -> dict[str, str]:
    """``bench.run``'s fileshare (8 MiB parts, 2 in flight, 8 scan slots, fileshare's
    defaults otherwise, SSE-S3 among them), on S3, with no reconciler rounds."""
    settings = base._fileshare_settings((buckets.unscanned, buckets.permanent), clamd)
    return settings | {
        "FILESHARE_STORAGE": "s3",
        "FILESHARE_S3_ENDPOINT": seaweed.endpoint,
        "FILESHARE_S3_REGION": seaweed.region,
        "FILESHARE_S3_ACCESS_KEY": seaweed.access_key,
        "FILESHARE_S3_SECRET_KEY": seaweed.secret_key,
        "FILESHARE_RECONCILE_INTERVAL": str(RECONCILE_INTERVAL),
    }


def run_on(plan: Plan, clamd: Clamd, seaweed: SeaweedS3, results: Results) -> dict[str, int]:
    """Measure on running servers: fresh buckets, and a ``fileshare serve`` of its own.
    Returns the checks' counts (see ``Context.checks``)."""
    buckets = Buckets.fresh()
    seaweed.create_bucket(buckets.unscanned)
    seaweed.create_bucket(buckets.permanent)
    with FileshareServer("direct", fileshare_settings(clamd, seaweed, buckets)) as fs:
        checks: dict[str, int] = {}

        async def go() -> None:
            checks.update(await measure(plan, results, clamd, seaweed, fs, buckets))

        base._section(go(), [clamd, seaweed, fs])
        return checks


# ------------------------------------------------------------------------- report


#: The ratios the summary reports at every size: (name, numerator, denominator).
RATIOS = [
    ("ingestion (i) / floor (r)", "i", "r"),
    ("ingestion (i) / clamd from memory (b)", "i", "b"),
    ("direct total (t) / streaming POST (d)", "t", "d"),
    ("presigned PUT (p) / streaming POST (d)", "p", "d"),
]


def summarize(results: Results) -> dict[str, Any]:
    medians: dict[str, dict[str, float]] = {}
    ratios: dict[str, float] = {}
    for label, scenarios in results.runs.get(SECTION, {}).items():
        m = {k: report.median([r["seconds"] for r in runs]) for k, runs in scenarios.items()}
        medians[label] = {k: round(v, 4) for k, v in m.items()}
        for name, num, den in RATIOS:
            if num in m and m.get(den, 0.0) > 0:
                ratios[f"{name} at {label}"] = round(m[num] / m[den], 3)
    conc = results.concurrency
    if conc.get("rounds"):
        rounds = conc["rounds"]
        phases = {p: report.median([r[p]["seconds"] for r in rounds]) for p in PHASES}
        label = f"{conc['objects']} x {report.size_label(conc['size'])} at once"
        medians[label] = {p: round(v, 3) for p, v in phases.items()}
        ratios["at once: ingestion / floor"] = round(phases["ingest"] / phases["floor"], 3)
    return {"medians_s": medians, "ratios": ratios}


PROCESSES = report.CPU_PROCESSES["s3"]


def _cpu_table(by_size: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """CPU seconds per process, as ``bench.run``'s table, and what the rest of the machine
    spent meanwhile (busy time no measured process accounts for: other work)."""
    label = max(by_size, key=lambda lb: int(lb.split()[0]) * (MiB if "MiB" in lb else 1))
    width = max(len(d) for _, d in SCENARIOS) + 2
    columns = [*PROCESSES, "total", "others", "wall"]
    lines = [f"CPU seconds per run at {label} (medians; 2 cores = 2 CPU-s per wall second)"]
    lines.append(" " * width + "".join(f"{c:>11}" for c in columns))
    for key, description in SCENARIOS:
        runs = by_size[label].get(key)
        if not runs:
            continue
        values = [report.median([r["cpu"].get(p, 0.0) for r in runs]) for p in PROCESSES]
        totals = [sum(r["cpu"].get(p, 0.0) for p in PROCESSES) for r in runs]
        others = [r["cpu"].get("machine_busy", t) - t for r, t in zip(runs, totals, strict=True)]
        wall = report.median([r["seconds"] for r in runs])
        cells = [*values, report.median(totals), report.median(others), wall]
        lines.append(f"{description:<{width}}" + "".join(f"{v:11.2f}" for v in cells))
    return lines


def _mean(runs: list[dict[str, Any]]) -> float:
    return float(sum(r["seconds"] for r in runs)) / len(runs)


def render(results: Results, plan: Plan) -> str:
    meta = results.meta
    by_size = results.runs.get(SECTION, {})
    counts = ", ".join(f"{report.size_label(s)} x{n}" for s, n in plan.runs.items())
    out = [
        "",
        f"fileshare direct-upload benchmark: {meta.get('cpus')} CPUs, {meta.get('clamd', '?')}, "
        f"commit {meta.get('commit', '?')}, {meta.get('duration_s', '?')} s",
        f"runs: {counts}. MB/s = 10^6 bytes/s.",
        "",
    ]
    if by_size:
        out += report._table("One upload (medians)", SCENARIOS, by_size)
        out.append("")
        width = max(len(d) for _, d in SCENARIOS) + 2
        labels = list(by_size)
        out.append("Means" + " " * (width - 5) + "".join(f"{lb:>12}" for lb in labels))
        for key, description in SCENARIOS:
            measured = [by_size[lb].get(key) for lb in labels]
            if any(measured):
                text = "".join(f"{_mean(c):10.3f} s" if c else f"{'-':>12}" for c in measured)
                out.append(f"{description:<{width}}{text}")
        out.append("")
        out += _cpu_table(by_size)
        out.append("")
        out.append("fileshare server stages (medians)")
        for label, scenarios in by_size.items():
            for key in ("d", "i"):
                if runs := scenarios.get(key):
                    names = runs[0]["server_stages"].keys()
                    stages = ", ".join(
                        f"{k[:-2]} {report.median([r['server_stages'][k] for r in runs]):.3f}"
                        for k in names
                    )
                    out.append(f"  {label} ({key}): {stages}")
        out.append("")
    conc = results.concurrency
    if conc.get("rounds"):
        n, label = conc["objects"], report.size_label(conc["size"])
        rounds = conc["rounds"]
        plural = "" if len(rounds) == 1 else "s"
        out.append(f"{n} objects of {label} at once ({len(rounds)} round{plural}; median, mean)")
        procs = PROCESSES
        out.append(
            f"{'':<34}{'median s':>9}{'mean s':>8}{'objects/s':>11}{'MiB/s':>8}   CPU s ("
            + ", ".join(procs)
            + ")"
        )
        for key, text in (
            ("put", f"{n} presigned PUTs"),
            ("floor", f"{n} x floor (GET -> clamd)"),
            ("ingest", f"{n} completions -> clean"),
        ):
            secs = [r[key]["seconds"] for r in rounds]
            mid = report.median(secs)
            mean = sum(secs) / len(secs)
            cpu = ", ".join(
                f"{report.median([r[key]['cpu'].get(p, 0.0) for r in rounds]):.1f}" for p in procs
            )
            out.append(
                f"  {text:<32}{mid:9.2f}{mean:8.2f}{n / mid:11.2f}"
                f"{n * conc['size'] / MiB / mid:8.1f}   {cpu}"
            )
        out.append(
            "  the whole machine, CPU s (medians): busy / idle / iowait / steal; "
            "others = busy that no measured process spent"
        )
        for key in PHASES:
            machine = [r[key].get("machine", {}) for r in rounds]
            split = " / ".join(
                f"{report.median([m.get(k, 0.0) for m in machine]):.1f}"
                for k in ("busy", "idle", "iowait", "steal")
            )
            others = report.median(
                [
                    r[key].get("machine", {}).get("busy", 0.0)
                    - sum(r[key]["cpu"].get(p, 0.0) for p in procs)
                    for r in rounds
                ]
            )
            out.append(f"    {key:<8}{split}; others {others:.1f}")
        per_upload = [r["ingest"].get("server_stages_mean", {}) for r in rounds]
        if per_upload and per_upload[0]:
            mean_stages = ", ".join(
                f"{k[:-2]} {report.median([s[k] for s in per_upload]):.2f}" for k in per_upload[0]
            )
            out.append(f"  fileshare stages per upload (mean; medians of rounds): {mean_stages}")
        out.append("")
    summary = results.summary
    if summary.get("ratios"):
        out.append("Ratios (of medians)")
        for name, value in summary["ratios"].items():
            out.append(f"  {name:<58}{value:7.2f}")
    checks = meta.get("checks", {})
    out.append("")
    out.append(
        f"checks: {checks.get('ingested', 0)} ingested clean; read more or less than once: "
        f"{checks.get('read_not_once', 0)}; staging objects left: "
        f"{checks.get('staged_left', 0) + checks.get('unscanned_left', 0)}"
    )
    if meta.get("interrupted") or meta.get("error"):
        out.append(f"\nINCOMPLETE: {meta.get('error') or 'interrupted'}")
    return "\n".join(out)


def _meta(plan: Plan, clamd: Clamd) -> dict[str, Any]:
    weed = Path(sys.executable).parent / "weed"
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "content": "os.urandom" if base._pure_random else "fixed 4 KiB head + os.urandom",
        "commit": base._version(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "clamd": clamd_command(clamd.host, clamd.port, b"VERSION").decode(errors="replace"),
        "seaweedfs": base._version([str(weed), "version"]) if weed.exists() else "unknown",
        "plan": asdict(plan),
        "clamd_config": {
            "StreamMaxLength": clamd.max_stream,
            "DisableCache": clamd.disable_cache,
            "MaxThreads": clamd.max_threads,
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m bench.direct", description=doc.split("\n")[0])
    parser.add_argument("--sizes", default="256", help="sizes in MiB, comma-separated (256)")
    parser.add_argument("--runs", type=int, help="runs per size (default 5; quick: 1)")
    parser.add_argument("--concurrent", type=int, default=16, help="objects at once (16)")
    parser.add_argument("--concurrent-size", default="256", help="their size in MiB (256)")
    parser.add_argument("--concurrent-rounds", type=int, help="rounds (default 2; quick: 1)")
    parser.add_argument("--no-concurrency", action="store_true", help="no staged rounds")
    parser.add_argument("--quick", action="store_true", help="1 run, 1 round")
    parser.add_argument("--sha256", action="store_true", help="declare sha256 in the intents")
    parser.add_argument(
        "--pure-random", action="store_true", help="no fixed 4 KiB head (see README)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON ({RESULTS})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    base._pure_random = args.pure_random
    plan = Plan.make(args)
    results = Results()
    started = time.perf_counter()
    status = 0
    try:
        with base._sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            progress("starting clamd (DisableCache yes) and SeaweedFS...")
            clamd = stack.enter_context(
                Clamd(max_stream=MAX_UPLOAD, disable_cache=True, max_threads=4)
            )
            seaweed = stack.enter_context(SeaweedS3())
            results.meta = _meta(plan, clamd)
            results.meta["checks"] = run_on(plan, clamd, seaweed, results)
    except KeyboardInterrupt:
        progress("interrupted: servers stopped; writing what was measured")
        results.meta["interrupted"] = True
        status = 130
    except Exception as exc:
        progress(f"benchmark failed: {type(exc).__name__}: {exc}")
        results.meta["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    checks = results.meta.get("checks", {})
    if checks.get("read_not_once") or checks.get("staged_left") or checks.get("unscanned_left"):
        status = status or 1
    results.meta["duration_s"] = round(time.perf_counter() - started, 1)
    results.summary = summarize(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(asdict(results), indent=2) + "\n")
    print(render(results, plan))
    progress(f"results written to {args.output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
