"""What the audit trail costs per upload: small uploads per second and CPU per upload, the
release before issue 9 (BEFORE) beside the work tree without (NOCHAIN) and with (AFTER) its
hash-chained audit rows, in one run.

    .venv/bin/python -m bench.audit_cost [--uploads N] [--clients 16] [--size 1024]
        [--rounds R] [--warmup W] [--before-tree /tmp/fs-before-audit]
        [--configs local-sqlite,s3-postgres] [--output FILE]

BEFORE is fileshare at commit b68be8c (static API keys, no principal, no audit trail),
checked out as a git worktree at ``--before-tree`` (``git -C . worktree add --detach
/tmp/fs-before-audit b68be8c``) and run with ``PYTHONPATH=<tree> PYTHONSAFEPATH=1``, as
``bench.index_cost`` runs its BEFORE. AFTER is the editable install of this work tree (HEAD
plus uncommitted changes): every upload appends its ``scan.verdict`` and ``file.upload`` rows
to the chain in the upload's own transaction. NOCHAIN is the same code with
``fileshare.index.audit.append`` replaced by a no-op (a ``sitecustomize`` on its
``PYTHONPATH``; nothing in fileshare has a switch for it): everything issue 9 added except
the rows themselves, so AFTER minus NOCHAIN is the chain's own cost and NOCHAIN minus BEFORE the
rest (principals, policy, audit events built and logged).

Which code runs is checked: an interpreter started as each server is imports ``fileshare``
from where it should (and NOCHAIN's ``append`` is the no-op), each index has its release's
schema (BEFORE: no ``audit_events``), and after the rounds AFTER's trail holds two rows per
upload (and verifies) while NOCHAIN's holds none.

Per config the three servers run at once and are measured in turn, the order rotating every
round, each a batch of ``--uploads`` POST /v1/files (fresh random bodies, 201 expected)
through ``--clients`` clients. CPU seconds from /proc: each fileshare process (on SQLite the
index runs inside it), the PostgreSQL backends of each server's database (the index's own
CPU on PostgreSQL), clamd, SeaweedFS and the client.

Prints markdown tables and writes JSON to ``bench/results/audit_cost.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/audit_cost.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.index_cost import (
    Meters,
    Plan,
    PostgresCpu,
    Shared,
    Side,
    _git,
    _median,
    _timed,
    batch,
    drive,
    postgres_tables,
    sqlite_tables,
)
from bench.procs import REPO, CpuMeter, FileshareServer
from bench.run import (
    API_KEY,
    CLAMD_MAX_SCANS,
    MAX_UPLOAD,
    _fileshare_settings,
    _section,
    _sigterm_as_interrupt,
    progress,
)
from tests.servers import Clamd

CONFIGS = ("local-sqlite", "s3-postgres")
SIDES = ("before", "nochain", "after")
BEFORE_COMMIT = "b68be8c"
RESULTS = REPO / "bench" / "results" / "audit_cost.json"
CLAMD_MAX_THREADS = 4
#: Rows each upload appends: its scan verdict and its record.
ROWS_PER_UPLOAD = 2
#: Loaded at NOCHAIN's start-up, before ``fileshare``: every caller reaches ``append``
#: through its module, so replacing it there turns every audit row into nothing.
SITECUSTOMIZE = """\
import fileshare.index.audit as _audit


def _no_chain(conn, events, now):
    return []


_no_chain.bench_no_chain = True
_audit.append = _no_chain
"""


# ------------------------------------------------------------------------ which code


def side_env(side: str, before_tree: Path, nochain_dir: Path) -> dict[str, str]:
    if side == "before":
        return {"PYTHONPATH": str(before_tree), "PYTHONSAFEPATH": "1"}
    if side == "nochain":
        return {"PYTHONPATH": str(nochain_dir)}
    return {}


def check_before_tree(tree: Path) -> None:
    if (
        not (tree / "fileshare" / "index" / "sql.py").is_file()
        or (tree / "fileshare" / "audit.py").exists()
    ):
        raise SystemExit(
            f"{tree} is not the release before issue 9 (want fileshare/index/sql.py and no "
            f"fileshare/audit.py): git -C {REPO} worktree add --detach {tree} {BEFORE_COMMIT}"
        )


def probe(side: str, before_tree: Path, nochain_dir: Path) -> str:
    """Where ``fileshare`` comes from for a server of ``side`` (same interpreter, directory
    and path variables as ``FileshareServer`` gives it), and whether ``append`` is real."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env |= side_env(side, before_tree, nochain_dir)
    code = (
        # Not find_spec: the editable install's finder would find the work tree's module
        # for a name the old tree lacks.
        "import fileshare, pathlib\n"
        "chain = 'none'\n"
        "if (pathlib.Path(fileshare.__file__).parent / 'audit.py').exists():\n"
        "    import fileshare.index.audit as a\n"
        "    chain = 'off' if getattr(a.append, 'bench_no_chain', False) else 'on'\n"
        "print(fileshare.__file__, chain)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


def check_imports(before_tree: Path, nochain_dir: Path) -> dict[str, str]:
    if os.environ.get("PYTHONPATH") or os.environ.get("PYTHONSAFEPATH"):
        raise SystemExit("unset PYTHONPATH / PYTHONSAFEPATH: the servers inherit them")
    here = REPO / "fileshare" / "__init__.py"
    want = {
        "before": f"{before_tree.resolve() / 'fileshare' / '__init__.py'} none",
        "nochain": f"{here} off",
        "after": f"{here} on",
    }
    found = {side: probe(side, before_tree, nochain_dir) for side in SIDES}
    for side in SIDES:
        if found[side] != want[side]:
            raise SystemExit(f"{side}: fileshare is {found[side]!r}, not {want[side]!r}")
    return found


def check_schema(side: str, tables: set[str]) -> None:
    if ("audit_events" in tables) != (side != "before") or "contents" not in tables:
        raise RuntimeError(f"{side} server made an index with tables {sorted(tables)}")


def audit_rows(config: str, server: FileshareServer, shared: Shared, database: str | None) -> int:
    if config == "local-sqlite":
        assert server.workdir is not None
        path = server.workdir / "data" / "index.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM audit_events").fetchone()[0])
    assert database is not None
    return int(shared.pg().psql("SELECT count(*) FROM audit_events", database=database))


def verify_trail(config: str, server: FileshareServer, dsn: str | None) -> str:
    """``fileshare audit verify`` on AFTER's index, as an operator would run it."""
    assert server.workdir is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("FILESHARE_")}
    env |= {
        "FILESHARE_API_KEYS": f"bench:{API_KEY}",
        "FILESHARE_DATA_DIR": str(server.workdir / "data"),
    }
    if dsn is not None:
        env["FILESHARE_INDEX_URL"] = dsn
    out = subprocess.run(
        [sys.executable, "-m", "fileshare", "audit", "verify"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"audit verify: {out.returncode} {out.stdout}{out.stderr}")
    return out.stdout.strip()


# ------------------------------------------------------------------------- measuring


async def measure(
    config: str, plan: Plan, sides: list[Side], pids: Mapping[str, int], pg: PostgresCpu | None
) -> list[dict[str, Any]]:
    meters = Meters(CpuMeter(pids), pg)
    if plan.warmup:
        for side in sides:
            await batch(side, plan.warmup, plan.clients, plan.size)
    rounds: list[dict[str, Any]] = []
    for r in range(plan.rounds):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]
        this: dict[str, Any] = {"round": r + 1, "order": [s.name for s in order]}
        for side in order:
            meters.start()
            seconds = await batch(side, plan.uploads, plan.clients, plan.size)
            cpu = meters.stop(sides)
            this[side.name] = {
                "seconds": round(seconds, 3),
                "per_s": round(plan.uploads / seconds, 1),
                "cpu": cpu,
            }
        rounds.append(this)
        progress(
            f"[{config}] round {r + 1}/{plan.rounds} ({'→'.join(this['order'])}): "
            + ", ".join(f"{s} {this[s]['per_s']}/s" for s in SIDES)
        )
    return rounds


def run_config(config: str, plan: Plan, shared: Shared, nochain_dir: Path) -> dict[str, Any]:
    servers: dict[str, FileshareServer] = {}
    databases: dict[str, str] = {}
    dsns: dict[str, str] = {}
    pids = {"bench": os.getpid(), "clamd": shared.clamd.pid}
    watched: list[Any] = [shared.clamd]
    checks: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        for side in SIDES:
            buckets = (f"audit-{side}-unscanned", f"audit-{side}-permanent")
            settings = _fileshare_settings(buckets, shared.clamd) | side_env(
                side, shared.before_tree, nochain_dir
            )
            if config == "local-sqlite":
                settings["FILESHARE_STORAGE"] = "local"
            else:
                seaweed, cluster = shared.s3(), shared.pg()
                for bucket in buckets:
                    seaweed.create_bucket(bucket)
                databases[side] = f"audit_{side}"
                dsns[side] = cluster.create_database(databases[side])
                settings |= {
                    "FILESHARE_STORAGE": "s3",
                    "FILESHARE_S3_ENDPOINT": seaweed.endpoint,
                    "FILESHARE_S3_REGION": seaweed.region,
                    "FILESHARE_S3_ACCESS_KEY": seaweed.access_key,
                    "FILESHARE_S3_SECRET_KEY": seaweed.secret_key,
                    "FILESHARE_INDEX_URL": dsns[side],
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
            result.extend(
                await drive(
                    config, plan, servers, databases, pids, pg, names=SIDES, measure_with=measure
                )
            )

        _section(go(), watched)
        uploads = plan.warmup + plan.rounds * plan.uploads
        for side in ("nochain", "after"):
            rows = audit_rows(config, servers[side], shared, databases.get(side))
            want = uploads * ROWS_PER_UPLOAD if side == "after" else 0
            if rows != want:
                raise RuntimeError(f"[{config}] {side}: {rows} audit rows, expected {want}")
            checks[f"{side}_audit_rows"] = rows
        checks["after_verify"] = verify_trail(config, servers["after"], dsns.get("after"))
        progress(f"[{config}] {checks}")
    return {"rounds": result, "summary": summarize(result, plan), "checks": checks}


# --------------------------------------------------------------------------- report


def summarize(rounds: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side in SIDES:
        cpu_ms: dict[str, float] = {}
        for proc in rounds[0][side]["cpu"] if rounds else ():
            if proc.startswith(("fileshare-", "postgres-")) and not proc.endswith(f"-{side}"):
                continue  # another server's process: idle while this one is measured
            key = proc.removesuffix(f"-{side}")
            cpu_ms[key] = _median([1000 * r[side]["cpu"][proc] / plan.uploads for r in rounds])
        out[side] = {
            "per_s_median": _median([r[side]["per_s"] for r in rounds]),
            "cpu_ms_per_upload": cpu_ms,
        }
    if rounds:
        for a, b in (("after", "before"), ("after", "nochain"), ("nochain", "before")):
            out[f"ratio_{a}_{b}"] = _median([r[a]["per_s"] / r[b]["per_s"] for r in rounds])
    return out


def render(results: dict[str, Any]) -> str:
    plan = results["meta"]["plan"]
    lines = [
        f"## Audit trail cost: {plan['uploads']} uploads of {plan['size']} B, "
        f"{plan['clients']} clients, {plan['rounds']} rounds (BEFORE {BEFORE_COMMIT}, "
        f"NOCHAIN and AFTER {results['meta']['after']})",
        "",
        "| config | before up/s | nochain up/s | after up/s | after/before | after/nochain | "
        "fileshare CPU ms/upload b / n / a | index (PostgreSQL) CPU ms/upload b / n / a |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for config, res in results["configs"].items():
        if not res["rounds"]:
            continue
        s = res["summary"]
        fs = " / ".join(f"{s[x]['cpu_ms_per_upload']['fileshare']:.2f}" for x in SIDES)
        pg = " / ".join(
            f"{s[x]['cpu_ms_per_upload'].get('postgres', float('nan')):.2f}" for x in SIDES
        )
        lines.append(
            f"| {config} | {s['before']['per_s_median']:.1f} | "
            f"{s['nochain']['per_s_median']:.1f} | {s['after']['per_s_median']:.1f} | "
            f"{s['ratio_after_before']:.3f} | {s['ratio_after_nochain']:.3f} | {fs} | "
            f"{pg if config != 'local-sqlite' else 'in fileshare'} |"
        )
    for config, res in results["configs"].items():
        if not res["rounds"]:
            continue
        lines += [
            "",
            f"### {config}: per round",
            "",
            "| round | order | before up/s | nochain up/s | after up/s |",
            "|---:|---|---:|---:|---:|",
        ]
        for r in res["rounds"]:
            lines.append(
                f"| {r['round']} | {' → '.join(r['order'])} | {r['before']['per_s']:.1f} | "
                f"{r['nochain']['per_s']:.1f} | {r['after']['per_s']:.1f} |"
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
        lines += ["", f"Checks: {res.get('checks')}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- driver


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.audit_cost", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--uploads", type=int, default=400, help="uploads per batch (400)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--size", type=int, default=1024, help="bytes per upload (1024)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per config (6)")
    parser.add_argument("--warmup", type=int, default=48, help="unrecorded uploads/server (48)")
    parser.add_argument("--before-tree", type=Path, default=Path("/tmp/fs-before-audit"))
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(args.uploads, args.clients, args.size, args.rounds, args.warmup)
    before_tree: Path = args.before_tree.resolve()
    check_before_tree(before_tree)
    nochain = tempfile.TemporaryDirectory(prefix="bench-nochain-")
    nochain_dir = Path(nochain.name)
    (nochain_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    imports = check_imports(before_tree, nochain_dir)
    progress(f"imports: {imports}")
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
            "rows_per_upload": ROWS_PER_UPLOAD,
        },
        "configs": {},
    }
    started = time.perf_counter()
    status = 0
    try:
        with _sigterm_as_interrupt(), contextlib.ExitStack() as stack, nochain:
            progress("starting clamd (DisableCache yes)...")
            clamd = stack.enter_context(
                Clamd(max_stream=MAX_UPLOAD, disable_cache=True, max_threads=CLAMD_MAX_THREADS)
            )
            shared = Shared(clamd=clamd, before_tree=before_tree, stack=stack)
            for config in args.configs:
                with _timed(f"[{config}] done"):
                    results["configs"][config] = run_config(config, plan, shared, nochain_dir)
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
