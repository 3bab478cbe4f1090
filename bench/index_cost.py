"""What the file index costs per upload: small uploads per second, the release before the
index rewrite (BEFORE) beside the current work tree (AFTER), in one run.

    .venv/bin/python -m bench.index_cost [--uploads N] [--clients 16] [--size 1024]
        [--rounds R] [--warmup W] [--before-tree /tmp/fs-before]
        [--configs local-sqlite,s3-postgres] [--output FILE]

BEFORE is fileshare at commit ab26c8b (hand-written sqlite3 / asyncpg index, dedup by a
HEAD on the permanent bucket), checked out as a git worktree at ``--before-tree``
(``git -C . worktree add --detach /tmp/fs-before ab26c8b``) and run by the same venv python
with ``PYTHONPATH=<tree>``. ``PYTHONSAFEPATH=1`` goes with it: ``python -m fileshare`` puts
its working directory (the repository, where ``FileshareServer`` starts it) first on
``sys.path``, which would import the work tree's package instead. Which code runs is checked
twice: an interpreter started as the server is (same environment and directory) must import
``fileshare`` from the tree, and once a server is up its index must have the schema of its
release (AFTER: ``contents`` and ``alembic_version``; BEFORE: neither).
AFTER is the editable install of this work tree (HEAD plus uncommitted changes).

Per config both servers run at once, on their own ports, and are measured alternately:
each round a batch of ``--uploads`` POST /v1/files (fresh random bodies of ``--size``
bytes, 201 expected) through ``--clients`` concurrent clients against one, then against
the other, the order swapped every round. Before the rounds, ``--warmup`` uploads per
server (not recorded). For every batch: uploads per second, and the CPU seconds (from
/proc) of each fileshare process, clamd, SeaweedFS, the PostgreSQL backends of each
server's database and the benchmark client.

Configs: ``local-sqlite`` (``FILESHARE_STORAGE=local``, a fresh data directory per server,
the SQLite index inside it: the embedded default) and ``s3-postgres`` (one SeaweedFS with
separate buckets per server, one PostgreSQL cluster with a fresh database per server).
One clamd (``DisableCache yes``) for all; ``FILESHARE_CLAMD_MAX_SCANS=8``.

Prints markdown tables and writes JSON to ``bench/results/index_cost.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/index_cost.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.clients import FileshareClient, bounded
from bench.procs import REPO, CpuMeter, FileshareServer, cpu_seconds
from bench.run import (
    API_KEY,
    CLAMD_MAX_SCANS,
    MAX_UPLOAD,
    OP_TIMEOUT,
    _fileshare_settings,
    _section,
    _sigterm_as_interrupt,
    progress,
)
from tests.servers import Clamd, Postgres, SeaweedS3

CONFIGS = ("local-sqlite", "s3-postgres")
SIDES = ("before", "after")
BEFORE_COMMIT = "ab26c8b"
RESULTS = REPO / "bench" / "results" / "index_cost.json"
#: The ratio after/before the rewrite is expected to reach.
TARGET = 0.95
CLAMD_MAX_THREADS = 4


# ------------------------------------------------------------------------ which code


def _side_env(side: str, before_tree: Path) -> dict[str, str]:
    """What a server of ``side`` gets on top of ``FileshareServer``'s environment."""
    if side == "before":
        return {"PYTHONPATH": str(before_tree), "PYTHONSAFEPATH": "1"}
    return {}


def check_before_tree(tree: Path) -> None:
    index = tree / "fileshare" / "index"
    if not (index / "sqlite.py").is_file() or (index / "sql.py").exists():
        raise SystemExit(
            f"{tree} is not the release before the index rewrite (want fileshare/index/"
            f"sqlite.py and no sql.py): git -C {REPO} worktree add --detach {tree} "
            f"{BEFORE_COMMIT}"
        )


def imported_from(side: str, before_tree: Path) -> str:
    """Where ``fileshare`` comes from for a server of ``side``: the same interpreter, working
    directory and path variables as ``FileshareServer`` gives it (``-c`` puts the working
    directory first on ``sys.path`` as ``-m`` does)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env |= _side_env(side, before_tree)
    out = subprocess.run(
        [sys.executable, "-c", "import fileshare; print(fileshare.__file__)"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def check_imports(before_tree: Path) -> dict[str, str]:
    if os.environ.get("PYTHONPATH") or os.environ.get("PYTHONSAFEPATH"):
        raise SystemExit("unset PYTHONPATH / PYTHONSAFEPATH: the servers inherit them")
    found = {side: imported_from(side, before_tree) for side in SIDES}
    want = {
        "before": before_tree.resolve() / "fileshare" / "__init__.py",
        "after": REPO / "fileshare" / "__init__.py",
    }
    for side in SIDES:
        if Path(found[side]).resolve() != want[side]:
            raise SystemExit(f"{side}: fileshare imported from {found[side]}, not {want[side]}")
    return found


def _has_rewrite_schema(tables: set[str]) -> bool:
    return {"contents", "alembic_version"} <= tables


def sqlite_tables(server: FileshareServer) -> set[str]:
    assert server.workdir is not None
    path = server.workdir / "data" / "index.sqlite3"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {name for (name,) in rows}


def postgres_tables(pg: Postgres, database: str) -> set[str]:
    out = pg.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=database)
    return set(out.split())


def check_schema(side: str, tables: set[str]) -> None:
    if _has_rewrite_schema(tables) != (side == "after"):
        raise RuntimeError(f"{side} server made an index with tables {sorted(tables)}")


# ------------------------------------------------------------------------------ /proc


def _ppid_and_cpu(pid: int) -> tuple[int, float]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[1]), cpu_seconds(pid)


class PostgresCpu:
    """CPU seconds of the postmaster's backends, by database (from their process title
    ``postgres: user database host(port) state``). Backends that exit between ``start`` and
    ``stop`` are missed (the pools keep theirs)."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self._before: dict[int, float] = {}

    def _backends(self) -> dict[int, tuple[str, float]]:
        found: dict[int, tuple[str, float]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                ppid, cpu = _ppid_and_cpu(pid)
                if ppid != self.postmaster:
                    continue
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().split()
            except (OSError, ValueError):
                continue
            if len(title) >= 3 and title[0] == "postgres:":
                found[pid] = (title[2], cpu)
        return found

    def start(self) -> None:
        self._before = {pid: cpu for pid, (_, cpu) in self._backends().items()}

    def stop(self) -> dict[str, float]:
        by_db: dict[str, float] = {}
        for pid, (db, cpu) in self._backends().items():
            by_db[db] = by_db.get(db, 0.0) + cpu - self._before.get(pid, 0.0)
        return {db: round(cpu, 3) for db, cpu in by_db.items()}


# ------------------------------------------------------------------------- measuring


@dataclass
class Side:
    name: str
    server: FileshareServer
    client: FileshareClient
    database: str | None = None


@dataclass
class Plan:
    uploads: int
    clients: int
    size: int
    rounds: int
    warmup: int


async def batch(side: Side, n: int, clients: int, size: int) -> float:
    """``n`` fresh uploads through ``clients`` workers; wall seconds. Every answer must be a
    201 (a new file, not a dedup hit)."""
    blobs = [os.urandom(size) for _ in range(n)]

    async def one(i: int) -> None:
        status, body = await side.client.upload(blobs[i])
        if status != 201 or body.get("size") != size:
            raise RuntimeError(f"{side.name}: upload {i} answered {status} {body!r:.300}")

    async with asyncio.timeout(OP_TIMEOUT):
        return await bounded(n, clients, one)


@dataclass
class Meters:
    cpu: CpuMeter
    pg: PostgresCpu | None

    def start(self) -> None:
        self.cpu.start()
        if self.pg is not None:
            self.pg.start()

    def stop(self, sides: Sequence[Side]) -> dict[str, float]:
        out = self.cpu.stop()
        if self.pg is not None:
            by_db = self.pg.stop()
            for side in sides:
                if side.database is not None:
                    out[f"postgres-{side.name}"] = by_db.get(side.database, 0.0)
        return out


async def measure(
    config: str, plan: Plan, sides: list[Side], pids: Mapping[str, int], pg: PostgresCpu | None
) -> list[dict[str, Any]]:
    meters = Meters(CpuMeter(pids), pg)
    if plan.warmup:
        for side in sides:
            await batch(side, plan.warmup, plan.clients, plan.size)
    rounds: list[dict[str, Any]] = []
    for r in range(plan.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        this: dict[str, Any] = {"round": r + 1, "order": [s.name for s in order]}
        for side in order:
            meters.start()
            seconds = await batch(side, plan.uploads, plan.clients, plan.size)
            cpu = meters.stop(sides)
            this[side.name] = {
                "seconds": round(seconds, 3),
                "per_s": round(plan.uploads / seconds, 1),
                "cpu": cpu,
                "fileshare_cpu_ms_per_upload": round(
                    1000 * cpu[f"fileshare-{side.name}"] / plan.uploads, 3
                ),
            }
        this["ratio"] = round(this["after"]["per_s"] / this["before"]["per_s"], 3)
        rounds.append(this)
        progress(
            f"[{config}] round {r + 1}/{plan.rounds} ({'→'.join(this['order'])}): "
            f"before {this['before']['per_s']}/s, after {this['after']['per_s']}/s, "
            f"ratio {this['ratio']}; fileshare CPU ms/upload "
            f"{this['before']['fileshare_cpu_ms_per_upload']} → "
            f"{this['after']['fileshare_cpu_ms_per_upload']}"
        )
    return rounds


Measure = Callable[
    [str, Plan, list[Side], Mapping[str, int], PostgresCpu | None],
    Awaitable[list[dict[str, Any]]],
]


async def drive(
    config: str,
    plan: Plan,
    servers: Mapping[str, FileshareServer],
    databases: Mapping[str, str],
    pids: Mapping[str, int],
    pg: PostgresCpu | None,
    *,
    names: Sequence[str] = SIDES,
    measure_with: Measure | None = None,
) -> list[dict[str, Any]]:
    """One client session per side (``names``, in order), measured by ``measure_with``
    (``measure``: before against after); ``bench.audit_cost`` passes its three sides."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=OP_TIMEOUT)
    async with contextlib.AsyncExitStack() as stack:
        sides = []
        for name in names:
            http = await stack.enter_async_context(
                aiohttp.ClientSession(
                    timeout=timeout, connector=aiohttp.TCPConnector(limit=plan.clients * 2)
                )
            )
            client = FileshareClient(http, servers[name].url, API_KEY)
            sides.append(Side(name, servers[name], client, databases.get(name)))
        return await (measure_with or measure)(config, plan, sides, pids, pg)


# -------------------------------------------------------------------------- servers


@dataclass
class Shared:
    clamd: Clamd
    before_tree: Path
    stack: contextlib.ExitStack
    seaweed: SeaweedS3 | None = None
    postgres: Postgres | None = None
    verified: dict[str, Any] = field(default_factory=dict)

    def s3(self) -> SeaweedS3:
        if self.seaweed is None:
            progress("starting SeaweedFS...")
            self.seaweed = self.stack.enter_context(SeaweedS3())
        return self.seaweed

    def pg(self) -> Postgres:
        if self.postgres is None:
            progress("starting PostgreSQL...")
            self.postgres = self.stack.enter_context(Postgres())
        return self.postgres


def run_config(config: str, plan: Plan, shared: Shared) -> dict[str, Any]:
    servers: dict[str, FileshareServer] = {}
    databases: dict[str, str] = {}
    pids = {"bench": os.getpid(), "clamd": shared.clamd.pid}
    watched: list[Any] = [shared.clamd]
    with contextlib.ExitStack() as stack:
        for side in SIDES:
            buckets = (f"{side}-unscanned", f"{side}-permanent")
            settings = _fileshare_settings(buckets, shared.clamd) | _side_env(
                side, shared.before_tree
            )
            if config == "local-sqlite":
                settings["FILESHARE_STORAGE"] = "local"
            else:
                seaweed, cluster = shared.s3(), shared.pg()
                for bucket in buckets:
                    seaweed.create_bucket(bucket)
                databases[side] = f"fs_{side}"
                settings |= {
                    "FILESHARE_STORAGE": "s3",
                    "FILESHARE_S3_ENDPOINT": seaweed.endpoint,
                    "FILESHARE_S3_REGION": seaweed.region,
                    "FILESHARE_S3_ACCESS_KEY": seaweed.access_key,
                    "FILESHARE_S3_SECRET_KEY": seaweed.secret_key,
                    "FILESHARE_INDEX_URL": cluster.create_database(databases[side]),
                }
                pids["seaweedfs"] = seaweed.pid
            progress(f"[{config}] starting fileshare {side}...")
            fs = stack.enter_context(FileshareServer(side, settings))
            servers[side] = fs
            pids[fs.name] = fs.pid
            watched.append(fs)
            if config == "local-sqlite":
                tables = sqlite_tables(fs)
            else:
                tables = postgres_tables(shared.pg(), databases[side])
            check_schema(side, tables)
            shared.verified[f"{config}/{side}"] = sorted(tables)
        pg: PostgresCpu | None = None
        if shared.postgres is not None and databases:
            pg = PostgresCpu(shared.postgres.pid)
            watched += [shared.seaweed, shared.postgres]
        result: list[dict[str, Any]] = []

        async def go() -> None:
            result.extend(await drive(config, plan, servers, databases, pids, pg))

        _section(go(), watched)
    return {"rounds": result, "summary": summarize(result, plan)}


# --------------------------------------------------------------------------- report


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def summarize(rounds: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ratio_median": _median([r["ratio"] for r in rounds]),
        "ratio_min": min((r["ratio"] for r in rounds), default=float("nan")),
        "ratio_max": max((r["ratio"] for r in rounds), default=float("nan")),
    }
    for side in SIDES:
        per_s = [r[side]["per_s"] for r in rounds]
        cpu_ms: dict[str, float] = {}
        for proc in rounds[0][side]["cpu"] if rounds else ():
            if proc.startswith(("fileshare-", "postgres-")) and not proc.endswith(side):
                continue  # the other server's process: idle while this one is measured
            key = proc.removesuffix(f"-{side}")
            cpu_ms[key] = _median([1000 * r[side]["cpu"][proc] / plan.uploads for r in rounds])
        out[side] = {"per_s_median": _median(per_s), "cpu_ms_per_upload": cpu_ms}
    if rounds:
        out["ratio_of_medians"] = round(
            out["after"]["per_s_median"] / out["before"]["per_s_median"], 3
        )
        fb, fa = (out[s]["cpu_ms_per_upload"]["fileshare"] for s in SIDES)
        out["fileshare_cpu_ratio"] = round(fa / fb, 3) if fb else float("nan")
        out["meets_target"] = out["ratio_median"] >= TARGET
    return out


def render(results: dict[str, Any]) -> str:
    plan = results["meta"]["plan"]
    lines = [
        f"## Index cost: {plan['uploads']} uploads of {plan['size']} B, {plan['clients']} "
        f"clients, {plan['rounds']} rounds (BEFORE {BEFORE_COMMIT}, AFTER "
        f"{results['meta']['after']})",
        "",
        "| config | before up/s | after up/s | ratio after/before (median; min..max) | "
        "fileshare CPU ms/upload before → after | target ≥ 0.95 |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for config, res in results["configs"].items():
        s = res["summary"]
        if not res["rounds"]:
            continue
        fb, fa = (s[side]["cpu_ms_per_upload"]["fileshare"] for side in SIDES)
        lines.append(
            f"| {config} | {s['before']['per_s_median']:.1f} | {s['after']['per_s_median']:.1f}"
            f" | **{s['ratio_median']:.3f}** ({s['ratio_min']:.3f}..{s['ratio_max']:.3f}) | "
            f"{fb:.2f} → {fa:.2f} (x{s['fileshare_cpu_ratio']:.2f}) | "
            f"{'yes' if s['meets_target'] else 'NO'} |"
        )
    for config, res in results["configs"].items():
        if not res["rounds"]:
            continue
        lines += [
            "",
            f"### {config}: per round",
            "",
            "| round | order | before up/s | after up/s | ratio | fileshare CPU ms/upload "
            "before | after |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in res["rounds"]:
            lines.append(
                f"| {r['round']} | {' → '.join(r['order'])} | {r['before']['per_s']:.1f} | "
                f"{r['after']['per_s']:.1f} | {r['ratio']:.3f} | "
                f"{r['before']['fileshare_cpu_ms_per_upload']:.2f} | "
                f"{r['after']['fileshare_cpu_ms_per_upload']:.2f} |"
            )
        procs = list(res["summary"]["before"]["cpu_ms_per_upload"])
        lines += [
            "",
            f"CPU ms per upload, every process (median over rounds, {config}):",
            "",
            "| side | " + " | ".join(procs) + " |",
            "|---|" + "---:|" * len(procs),
        ]
        for side in SIDES:
            cpu = res["summary"][side]["cpu_ms_per_upload"]
            lines.append(f"| {side} | " + " | ".join(f"{cpu[p]:.2f}" for p in procs) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- driver


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False, timeout=30
    )
    return out.stdout.strip()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.index_cost", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--uploads", type=int, default=400, help="uploads per batch (400)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--size", type=int, default=1024, help="bytes per upload (1024)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per config (5)")
    parser.add_argument("--warmup", type=int, default=48, help="unrecorded uploads/server (48)")
    parser.add_argument("--before-tree", type=Path, default=Path("/tmp/fs-before"))
    parser.add_argument("--configs", default=",".join(CONFIGS), help=",".join(CONFIGS))
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON ({RESULTS})")
    args = parser.parse_args(argv)
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    for config in args.configs:
        if config not in CONFIGS:
            parser.error(f"unknown config {config!r}: choose from {', '.join(CONFIGS)}")
    if min(args.uploads, args.clients, args.size, args.rounds) < 1 or args.warmup < 0:
        parser.error("--uploads, --clients, --size and --rounds must be at least 1")
    return args


@contextlib.contextmanager
def _timed(what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    progress(f"{what}: {time.perf_counter() - started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(args.uploads, args.clients, args.size, args.rounds, args.warmup)
    before_tree: Path = args.before_tree.resolve()
    check_before_tree(before_tree)
    imports = check_imports(before_tree)
    progress(f"BEFORE imports {imports['before']}; AFTER imports {imports['after']}")
    dirty = _git("status", "--porcelain", "--", "fileshare")
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "before": BEFORE_COMMIT,
            "before_tree": str(before_tree),
            "after": _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else ""),
            "after_uncommitted": dirty.splitlines(),
            "imports": imports,
            "plan": vars(plan),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "clamd_config": {"DisableCache": True, "MaxThreads": CLAMD_MAX_THREADS},
            "fileshare_clamd_max_scans": CLAMD_MAX_SCANS,
            "target_ratio": TARGET,
        },
        "configs": {},
    }
    started = time.perf_counter()
    status = 0
    try:
        with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            progress("starting clamd (DisableCache yes)...")
            clamd = stack.enter_context(
                Clamd(max_stream=MAX_UPLOAD, disable_cache=True, max_threads=CLAMD_MAX_THREADS)
            )
            shared = Shared(clamd=clamd, before_tree=before_tree, stack=stack)
            for config in args.configs:
                with _timed(f"[{config}] done"):
                    results["configs"][config] = run_config(config, plan, shared)
            results["meta"]["index_tables"] = shared.verified
    except KeyboardInterrupt:
        progress("interrupted: servers stopped; writing what was measured")
        results["meta"]["interrupted"] = True
        status = 130
    except Exception as exc:
        progress(f"benchmark failed: {type(exc).__name__}: {exc}")
        results["meta"]["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    progress(f"results written to {args.output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
