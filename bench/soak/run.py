"""Wiring: the servers, one ``fileshare serve`` process, the load, the checks, the report.

``Soak`` is given running servers (the command line starts its own; the smoke test passes
the test session's) and starts fileshare on fresh buckets and a fresh database of its own,
so it never sees another run's objects or rows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import aiohttp

from bench.procs import REPO, FileshareServer, cpu_seconds, rss_bytes
from bench.soak import checks
from bench.soak.bodies import SIZE_BANDS, MiB
from bench.soak.driver import Api, Driver, Plan
from bench.soak.ledger import Ledger, Record
from bench.soak.probes import (
    GcsProbe,
    IndexProbe,
    LocalProbe,
    PostgresProbe,
    S3Probe,
    SqliteProbe,
    StoreProbe,
)
from fileshare.config import Settings
from tests.servers import Clamd, FakeGcs, Postgres, SeaweedS3

Backend = Literal["s3", "gcs", "local"]
BACKENDS: tuple[Backend, ...] = ("s3", "gcs", "local")
RESULTS = REPO / "bench" / "results" / "soak.json"
OWNERS = ("soak-a", "soak-b", "soak-c")
#: fileshare's own default, the figure the RSS budget is derived from unless overridden.
_budget_default = Settings.__dataclass_fields__["memory_budget"].default
assert isinstance(_budget_default, int)
DEFAULT_MEMORY_BUDGET: int = _budget_default


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Servers:
    """What fileshare runs against; ``postgres`` None: the SQLite index."""

    clamd: Clamd
    backend: Backend
    seaweed: SeaweedS3 | None = None
    gcs: FakeGcs | None = None
    postgres: Postgres | None = None

    def pids(self) -> dict[str, int]:
        out = {"clamd": self.clamd.pid}
        if self.seaweed is not None:
            out["seaweedfs"] = self.seaweed.pid
        if self.gcs is not None:
            out["fake-gcs"] = self.gcs.pid
        return out


@dataclass
class Options:
    memory_budget: int = DEFAULT_MEMORY_BUDGET
    #: How long the end waits for the stores to be clean and the budget released.
    settle_deadline: float = 60.0
    extra_settings: dict[str, str] = field(default_factory=dict)


class Soak:
    def __init__(self, plan: Plan, servers: Servers, options: Options | None = None) -> None:
        self.plan = plan
        self.servers = servers
        self.options = options or Options()
        token = secrets.token_hex(4)
        self.unscanned = f"soak-{token}-unscanned"
        self.permanent = f"soak-{token}-permanent"
        self.database = f"soak_{token}"
        self.server: FileshareServer | None = None
        self.store: StoreProbe | None = None
        self.index: IndexProbe | None = None
        self.ledger = Ledger()

    # -- set-up ---------------------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        s = self.servers
        settings = {
            "FILESHARE_STORAGE": s.backend,
            "FILESHARE_UNSCANNED_BUCKET": self.unscanned,
            "FILESHARE_PERMANENT_BUCKET": self.permanent,
            "FILESHARE_CLAMD": s.clamd.address,
            # Room above the largest body, within what clamd accepts.
            "FILESHARE_MAX_UPLOAD_SIZE": str(min(s.clamd.max_stream, 2 * self.plan.max_size + MiB)),
            "FILESHARE_MEMORY_BUDGET": str(self.options.memory_budget),
            "FILESHARE_API_KEYS": ",".join(f"{o}:{k}" for o, k in self.plan.owners.items()),
        }
        if s.backend == "s3":
            assert s.seaweed is not None
            for bucket in (self.unscanned, self.permanent):
                s.seaweed.create_bucket(bucket)
            settings |= {
                "FILESHARE_S3_ENDPOINT": s.seaweed.endpoint,
                "FILESHARE_S3_REGION": s.seaweed.region,
                "FILESHARE_S3_ACCESS_KEY": s.seaweed.access_key,
                "FILESHARE_S3_SECRET_KEY": s.seaweed.secret_key,
            }
        elif s.backend == "gcs":
            assert s.gcs is not None
            for bucket in (self.unscanned, self.permanent):
                s.gcs.create_bucket(bucket)
            settings |= {
                "FILESHARE_GCS_ENDPOINT": s.gcs.endpoint,
                "FILESHARE_GCS_PROJECT": s.gcs.project,
            }
        if s.postgres is not None:
            settings["FILESHARE_INDEX_URL"] = s.postgres.create_database(self.database)
        return settings | self.options.extra_settings

    def __enter__(self) -> Self:
        settings = self.settings()
        server = FileshareServer(f"soak-{self.servers.backend}", settings)
        self.server = server.start()
        assert server.workdir is not None
        s = self.servers
        if s.backend == "s3":
            assert s.seaweed is not None
            self.store = S3Probe(s.seaweed)
        elif s.backend == "gcs":
            assert s.gcs is not None
            self.store = GcsProbe(s.gcs)
        else:
            self.store = LocalProbe(server.workdir / "data")
        if s.postgres is not None:
            self.index = PostgresProbe(s.postgres, self.database)
        else:
            self.index = SqliteProbe(server.workdir / "data" / "index.sqlite3")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.server is not None:
            self.server.stop()

    # -- the run --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Load, then every check; the report (``report["ok"]`` says whether nothing was
        lost and nothing leaked)."""
        return asyncio.run(self._run())

    def session(self) -> aiohttp.ClientSession:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.plan.op_timeout)
        connector = aiohttp.TCPConnector(limit=self.plan.clients * 2 + 16)
        return aiohttp.ClientSession(timeout=timeout, connector=connector)

    async def _run(self) -> dict[str, Any]:
        server, store, index = self.server, self.store, self.index
        assert server is not None
        assert store is not None
        assert index is not None
        async with self.session() as http:
            api = Api(http, server.url, self.plan.owners)
            driver = Driver(
                self.plan,
                api,
                self.ledger,
                server_pid=server.pid,
                server_running=lambda: server.running,
            )
            progress(f"[soak] warm-up against {server.url}")
            await driver.warm_up()
            baseline = rss_bytes(server.pid)
            meters = _Meters(self.servers, server.pid)
            progress(
                f"[soak] {self.plan.clients} clients for {self.plan.duration:.0f} s, sizes up to "
                f"{self.plan.max_size / MiB:g} MiB; RSS baseline {baseline / MiB:.0f} MiB"
            )
            meters.start()
            load_seconds = await driver.run()
            cpu = meters.stop(load_seconds)
            progress(f"[soak] load done in {load_seconds:.0f} s; checking")
            findings = checks.Findings()
            if not server.running:
                findings.loss("server died", server.log_tail(20))
                return self.report(driver, findings, load_seconds, baseline, baseline, cpu)
            await checks.wait_budget_released(api, findings, deadline=self.options.settle_deadline)
            await checks.wait_stores_clean(
                store,
                findings,
                unscanned_bucket=self.unscanned,
                permanent_bucket=self.permanent,
                deadline=self.options.settle_deadline,
            )
            findings.notes["server_counts"] = _server_counts(await api.metrics())
            await checks.verify_records(api, self.ledger, findings)
            await asyncio.to_thread(self._check_index, findings)
            end_rss = rss_bytes(server.pid)
        checks.check_log(server.log_path, findings)
        return self.report(driver, findings, load_seconds, baseline, end_rss, cpu)

    def recheck(self, records: list[Record], *, deadline: float = 1.0) -> checks.Findings:
        """The checks of the end again, now, downloading only ``records`` (the smoke test
        tampers with the ledger and plants leftovers first, to show that they are seen)."""
        return asyncio.run(self._recheck(records, deadline))

    async def _recheck(self, records: list[Record], deadline: float) -> checks.Findings:
        server, store, index = self.server, self.store, self.index
        assert server is not None
        assert store is not None
        assert index is not None
        findings = checks.Findings()
        async with self.session() as http:
            api = Api(http, server.url, self.plan.owners)
            await checks.wait_stores_clean(
                store,
                findings,
                unscanned_bucket=self.unscanned,
                permanent_bucket=self.permanent,
                deadline=deadline,
            )
            await checks.verify_records(api, self.ledger, findings, only=records)
        await asyncio.to_thread(self._check_index, findings)
        return findings

    def _check_index(self, findings: checks.Findings) -> None:
        assert self.index is not None
        assert self.store is not None
        checks.verify_index(
            self.index, self.store, self.ledger, findings, permanent_bucket=self.permanent
        )

    # -- the report -----------------------------------------------------------------------

    def report(
        self,
        driver: Driver,
        findings: checks.Findings,
        load_seconds: float,
        baseline: int,
        end_rss: int,
        cpu: dict[str, Any],
    ) -> dict[str, Any]:
        ledger, samples = self.ledger, driver.samples
        if samples.server_died_at is not None:
            findings.loss("server died", f"at {samples.server_died_at:.0f} s")
        budget = checks.RssBudget(baseline, self.options.memory_budget, self.plan.clients)
        rss = checks.check_rss(samples.rss, budget, end_rss, findings)
        losses = ledger.losses + findings.losses
        acked = ledger.counts["ok_201_created"] + ledger.counts["ok_200_same_record"]
        all_acks = [s for k, v in ledger.latencies.items() if k.startswith("ack ") for s in v]
        latency = {"ack all": _quantiles(all_acks)} | {
            k: _quantiles(v) for k, v in sorted(ledger.latencies.items())
        }
        report: dict[str, Any] = {
            "ok": not losses and not findings.leaks,
            "losses_total": sum(losses.values()),
            "leaks_total": sum(findings.leaks.values()),
            "losses": dict(losses),
            "leaks": dict(findings.leaks),
            "details": ledger.loss_details + findings.details,
            "backend": self.servers.backend,
            "index": "postgres" if self.servers.postgres is not None else "sqlite",
            "plan": {
                "clients": self.plan.clients,
                "duration_s": self.plan.duration,
                "max_size": self.plan.max_size,
                "seed": self.plan.seed,
                "owners": sorted(self.plan.owners),
                "memory_budget": self.options.memory_budget,
                "extra_settings": self.options.extra_settings,
                "size_bands": [list(b) for b in SIZE_BANDS],
            },
            "load_seconds": round(load_seconds, 1),
            "uploads": {
                "acknowledged": acked,
                "per_s": round(acked / load_seconds, 2) if load_seconds else 0.0,
                "bytes_acknowledged": ledger.bytes_acknowledged,
                "acknowledged_MB_per_s": round(ledger.bytes_acknowledged / load_seconds / 1e6, 2)
                if load_seconds
                else 0.0,
                "bytes_sent": ledger.bytes_sent,
                "records_expected_live": len(ledger.expected_live()),
                "records_deleted": len(ledger.expected_deleted()),
            },
            "outcomes": dict(sorted(ledger.counts.items())),
            "operations_started": dict(sorted(driver.ops_started.items())),
            "latency_s": latency,
            "rss": rss,
            "budget_in_use_peak": max((v for _, v in samples.budget_in_use), default=0.0),
            "inflight_peak": max((v for _, v in samples.inflight), default=0.0),
            "healthz_s": _quantiles(samples.healthz_seconds)
            | {"failures": samples.healthz_failures},
            "cpu": cpu,
            "checks": findings.notes,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "commit": _git_head(),
            },
        }
        return report


def _server_counts(metrics: dict[str, float]) -> dict[str, float]:
    """fileshare's own counts of what it answered uploads (beside the ledger's)."""
    return {
        name: value
        for name, value in sorted(metrics.items())
        if name.startswith("fileshare_uploads_total")
        or (name.startswith("fileshare_http_requests_total") and 'route="/v1/files"' in name)
    }


def _quantiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))], 4)

    return {
        "n": len(ordered),
        "p50": round(statistics.median(ordered), 4),
        "p99": q(0.99),
        "max": round(ordered[-1], 4),
    }


def _git_head() -> str:
    with contextlib.suppress(OSError):
        head = (REPO / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            return (REPO / ".git" / head[5:]).read_text().strip()[:7]
        return head[:7]
    return "unknown"


# ------------------------------------------------------------------------------- CPU


def _machine_busy() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class _Meters:
    """CPU seconds of the soak's own processes over the load, beside the whole machine's:
    the difference is other work sharing the cores."""

    def __init__(self, servers: Servers, fileshare_pid: int) -> None:
        self.pids = {"bench": os.getpid(), "fileshare": fileshare_pid} | servers.pids()
        self.postgres = servers.postgres
        self._before: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                out[name] = cpu_seconds(pid)
        if self.postgres is not None:
            out["postgres"] = _tree_cpu(self.postgres.pid)
        out["machine"] = _machine_busy()
        return out

    def start(self) -> None:
        self._before = self._read()
        self._load_before = os.getloadavg()

    def stop(self, seconds: float) -> dict[str, Any]:
        after = self._read()
        used = {k: round(after[k] - self._before.get(k, 0.0), 1) for k in after}
        ours = sum(v for k, v in used.items() if k != "machine")
        return {
            "cpu_s": used,
            "cores_busy_machine": round(used["machine"] / seconds, 2) if seconds else 0.0,
            "cores_busy_soak": round(ours / seconds, 2) if seconds else 0.0,
            "cores_busy_other_work": round((used["machine"] - ours) / seconds, 2)
            if seconds
            else 0.0,
            "loadavg_before": self._load_before,
            "loadavg_after": os.getloadavg(),
        }


def _tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its children (PostgreSQL's backends; those that exited
    are missed — fileshare's pool keeps its own)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            if int(entry.name) == root or ppid == root:
                total += cpu_seconds(int(entry.name))
        except (OSError, ValueError):
            continue
    return total


# ---------------------------------------------------------------------------- render


def render(report: dict[str, Any]) -> str:
    r, up, rss = report, report["uploads"], report["rss"]
    mib = 1024 * 1024
    cpu = r["cpu"]
    lines = [
        f"## Soak: {r['plan']['clients']} clients, {r['load_seconds']:.0f} s, {r['backend']} + "
        f"{r['index']}, sizes 0 B to {r['plan']['max_size'] / mib:g} MiB — "
        + ("**nothing lost, nothing leaked**" if r["ok"] else "**FAILED**"),
        "",
        "| | |",
        "|---|---|",
        f"| acknowledged uploads | {up['acknowledged']} ({up['per_s']}/s), "
        f"{up['bytes_acknowledged'] / 1e9:.2f} GB ({up['acknowledged_MB_per_s']} MB/s) |",
        f"| bytes sent (all uploads, aborted included) | {up['bytes_sent'] / 1e9:.2f} GB |",
        f"| records at the end | {up['records_expected_live']} live, "
        f"{up['records_deleted']} deleted |",
        "| outcomes | " + ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()) + " |",
        f"| RSS baseline / peak / end / limit | {rss['baseline'] / mib:.0f} / "
        f"{rss['peak'] / mib:.0f} / {rss['end'] / mib:.0f} / {rss['limit'] / mib:.0f} MiB "
        f"(first / last fifth median {rss['first_fifth_median'] / mib:.0f} / "
        f"{rss['last_fifth_median'] / mib:.0f}) |",
        f"| memory budget peak in use | {r['budget_in_use_peak'] / mib:.0f} of "
        f"{rss['memory_budget'] / mib:.0f} MiB; uploads in flight peak {r['inflight_peak']:.0f} |",
        f"| /healthz under load | p50 {r['healthz_s'].get('p50', 0)} s, p99 "
        f"{r['healthz_s'].get('p99', 0)} s, failures {r['healthz_s']['failures']} |",
        f"| cores busy | machine {cpu['cores_busy_machine']}, soak's processes "
        f"{cpu['cores_busy_soak']}, other work {cpu['cores_busy_other_work']} "
        f"(load {cpu['loadavg_before'][0]:.1f} → {cpu['loadavg_after'][0]:.1f}) |",
        "| CPU s | " + ", ".join(f"{k} {v}" for k, v in cpu["cpu_s"].items()) + " |",
        f"| losses / leaks | {r['losses_total']} / {r['leaks_total']} |",
        "",
        "| latency (s) | n | p50 | p99 | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, q in r["latency_s"].items():
        if q.get("n"):
            lines.append(f"| {key} | {q['n']} | {q['p50']} | {q['p99']} | {q['max']} |")
    lines += [
        "",
        "RSS (highest per tenth of the run): "
        + ", ".join(f"{t:.0f} s {v / mib:.0f} MiB" for t, v in rss["timeline"]),
    ]
    if r["details"]:
        lines += ["", "Findings:"] + [f"- {d}" for d in r["details"]]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- driver


def parse_size(text: str) -> int:
    text = text.strip().lower()
    for suffix, factor in (("gib", 1024**3), ("mib", MiB), ("kib", 1024), ("b", 1)):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--clients", type=int, default=50, help="concurrent clients (50)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (600)")
    parser.add_argument("--backend", choices=BACKENDS, default="s3", help="storage (s3)")
    parser.add_argument(
        "--index", choices=("postgres", "sqlite"), help="index (postgres; sqlite for local)"
    )
    parser.add_argument(
        "--max-size", type=parse_size, default=64 * MiB, help="largest body (64MiB)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--memory-budget",
        type=parse_size,
        default=DEFAULT_MEMORY_BUDGET,
        help="FILESHARE_MEMORY_BUDGET (fileshare's default)",
    )
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="FILESHARE_X=VALUE",
        help="another fileshare setting (repeatable), e.g. FILESHARE_BUDGET_WAIT=1",
    )
    parser.add_argument("--settle", type=float, default=60.0, help="seconds the end waits (60)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON ({RESULTS})")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.max_size < 1:
        parser.error("--clients, --duration and --max-size must be positive")
    for item in args.setting:
        name, sep, _ = item.partition("=")
        if not sep or not name.startswith("FILESHARE_"):
            parser.error(f"--setting takes FILESHARE_NAME=VALUE, not {item!r}")
    if args.index is None:
        args.index = "sqlite" if args.backend == "local" else "postgres"
    return args


def owners() -> dict[str, str]:
    return {owner: f"{owner}-key-{secrets.token_hex(12)}" for owner in OWNERS}


def main(argv: list[str] | None = None) -> int:
    from bench.run import _sigterm_as_interrupt

    args = parse_args(argv)
    plan = Plan(
        clients=args.clients,
        duration=args.duration,
        max_size=args.max_size,
        seed=args.seed,
        owners=owners(),
    )
    options = Options(
        memory_budget=args.memory_budget,
        settle_deadline=args.settle,
        extra_settings=dict(item.split("=", 1) for item in args.setting),
    )
    started = time.perf_counter()
    try:
        with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            progress("[soak] starting clamd...")
            clamd = stack.enter_context(Clamd(max_stream=max(512 * MiB, 2 * args.max_size)))
            servers = Servers(clamd=clamd, backend=args.backend)
            if args.backend == "s3":
                progress("[soak] starting SeaweedFS...")
                servers.seaweed = stack.enter_context(SeaweedS3())
            elif args.backend == "gcs":
                progress("[soak] starting fake-gcs-server...")
                servers.gcs = stack.enter_context(FakeGcs())
            if args.index == "postgres":
                progress("[soak] starting PostgreSQL...")
                servers.postgres = stack.enter_context(Postgres())
            progress("[soak] starting fileshare...")
            with Soak(plan, servers, options) as soak:
                report = soak.run()
    except KeyboardInterrupt:
        progress("[soak] interrupted: servers stopped")
        return 130
    report["duration_s"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=_json) + "\n")
    print(render(report))
    progress(f"[soak] report written to {args.output}")
    return 0 if report["ok"] else 1


def _json(value: object) -> object:
    if isinstance(value, tuple):
        return list(value)
    return asdict(value) if hasattr(value, "__dataclass_fields__") else str(value)  # type: ignore[call-overload]
