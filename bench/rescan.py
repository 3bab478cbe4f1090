"""Rescans (issue 13): fileshare's rescan throughput beside clamd alone on the same bytes, and
what rescanning once per content instead of once per file record saves when records share
their bytes.

    .venv/bin/python -m bench.rescan [--contents 400] [--files 1200] [--runs 3] [--zipf 1.0]
        [--seed 1] [--quick] [--output FILE]

Set-up: clamd (``DisableCache yes``: a signature update, which is what makes rescans due,
empties clamd's cache anyway), fileshare's local-directory storage and its SQLite index in a
temporary directory, and fileshare itself in this process, wired by ``create_app`` as
``fileshare rescan`` wires it. The corpus is seeded straight into the store and the index
(untimed): ``--contents`` unique contents, sizes log-uniform in 64 KiB - 4 MiB, of fresh
random bytes behind ``bench.run``'s fixed 4 KiB head; each has one file record, and the
``--files`` minus ``--contents`` records left pick their content by a Zipf law of exponent
``--zipf`` over the contents' ranks (a few contents referenced by very many records, most by
one), owners taken in turn among 8.

Per run, each over the whole corpus, in an order rotated every run:

  (b)  clamd alone: every content's file read from the store's directory in 1 MiB chunks
       into clamd INSTREAM (fileshare's ``ClamdScanner``), one at a time;
  (a)  ``Rescanner.run`` as ``fileshare rescan --all`` calls it: lease, read back, hash and
       scan, record, one content at a time; with each step's time;
  (a') the command ``fileshare rescan --all`` in a subprocess, its start-up included (and
       after the run, untimed in the table, the same with ``--limit 0``: start-up alone);
  (c)  the per-file counterfactual: (b) once per file record instead of once per content.

Prints a table and writes JSON to ``bench/results/rescan.json``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/rescan.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from bench.clients import MiB
from bench.direct import machine_cpu
from bench.procs import REPO, CpuMeter, _python
from bench.report import median
from bench.run import (
    CLAMD_MAX_SCANS,
    MAX_UPLOAD,
    OP_TIMEOUT,
    _sigterm_as_interrupt,
    fresh,
    progress,
)
from fileshare.api.keys import METRICS
from fileshare.app import INDEX, RESCANNER, SCANNER, STORAGE, create_app
from fileshare.audit import Action, AuditEvent
from fileshare.config import load_settings
from fileshare.index.base import FileIndex, Placement
from fileshare.logging import configure_logging
from fileshare.models import Content, ScanRecord, ScanState, new_object_key
from fileshare.rescan import Rescanner
from tests.servers import Clamd, clamd_command

KiB = 1024
RESULTS = REPO / "bench" / "results" / "rescan.json"
SMALLEST, LARGEST = 64 * KiB, 4 * MiB
OWNERS = 8
UNSCANNED, PERMANENT = "rescan-unscanned", "rescan-permanent"
#: The seeded verdicts' age: past FILESHARE_RESCAN_AFTER's default (30 days).
VERDICT_AGE = timedelta(days=31)
READ_CHUNK = 1 * MiB
#: Steps of a rescan timed in (a), each a method of the object the Rescanner calls.
STEPS = ("lease", "head", "scan_stored", "record")
#: Inside ``scan_stored``, from fileshare's metrics.
SCAN_STAGES = ("transfer", "verdict_wait")

ROWS = [
    ("a", "(a)  fileshare Rescanner.run (--all)"),
    ("cli", "(a') fileshare rescan --all, the CLI"),
    ("b", "(b)  clamd alone, once per content"),
    ("c", "(c)  clamd alone, once per file record"),
]


# ---------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Plan:
    contents: int
    files: int
    runs: int
    zipf: float = 1.0
    seed: int = 1


@dataclass
class Item:
    """One unique content and how many file records reference it."""

    sha256: str
    key: str
    size: int
    refs: int
    #: Its file in the local store's directory (``<bucket>/<key>`` links to its object).
    path: Path


def corpus_shape(plan: Plan) -> tuple[list[int], list[int]]:
    """The sizes and reference counts of ``plan.contents`` contents (rank order): sizes
    log-uniform in [64 KiB, 4 MiB]; one record each, and every further record drawn by a
    Zipf law over the ranks. Deterministic for a seed."""
    rng = random.Random(plan.seed)
    span = math.log(LARGEST / SMALLEST)
    sizes = [int(SMALLEST * math.exp(rng.random() * span)) for _ in range(plan.contents)]
    weights = [1 / rank**plan.zipf for rank in range(1, plan.contents + 1)]
    refs = [1] * plan.contents
    for rank in rng.choices(range(plan.contents), weights, k=plan.files - plan.contents):
        refs[rank] += 1
    return sizes, refs


async def seed(app: web.Application, plan: Plan, data_dir: Path) -> list[Item]:
    """Store every content and commit its records as an upload and its duplicates would
    (``held`` for the duplicates: the index's dedup path), verdicted clean a month ago, a
    second apart (verdicts sharing one time cost each lease a sort: see bench/README.md)."""
    storage, index = app[STORAGE], app[INDEX]
    scanner = await app[SCANNER].provenance()
    month_ago = datetime.now(UTC) - VERDICT_AGE
    items: list[Item] = []
    sizes, refs = corpus_shape(plan)
    owner = 0
    for rank, (size, count) in enumerate(zip(sizes, refs, strict=True)):
        verdicted = month_ago + timedelta(seconds=rank)
        data = fresh(size)
        sha256 = hashlib.sha256(data).hexdigest()
        key = new_object_key(sha256)
        # As an upload does: the key is reserved before its object is written.
        if await index.claim(sha256, key, datetime.now(UTC) + timedelta(hours=1)) is not None:
            raise RuntimeError(f"{sha256} is already known")
        await storage.put(PERMANENT, key, data)
        content = Content(
            sha256=sha256,
            sha1=hashlib.sha1(data).digest(),  # noqa: S324 (FHIR's Attachment.hash)
            size=size,
            key=key,
            scan=ScanRecord(ScanState.CLEAN, scanner=scanner, scanned_at=verdicted),
        )
        for n in range(count):
            owner = (owner + 1) % OWNERS
            await _commit(index, f"owner-{owner}", content, held=n > 0, now=verdicted)
        items.append(Item(sha256, key, size, count, data_dir / PERMANENT / key / "data"))
    return items


async def _commit(
    index: FileIndex, owner: str, content: Content, *, held: bool, now: datetime
) -> None:
    await index.commit(
        owner,
        content,
        name=f"{uuid.uuid4().hex[:12]}.bin",
        content_type="application/octet-stream",
        placement=Placement(new_id=uuid.uuid4().hex),
        held=held,
        now=now,
        created_by=owner,
        audit=AuditEvent(action=Action.FILE_UPLOAD, subject=owner, owner=owner),
    )


# ------------------------------------------------------------------------- measuring


@dataclass
class Steps:
    """Time spent in each step of a rescan, and when each content's turn began (its lease
    call), from wrappers set on the app's own index, storage and pipeline objects."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))
    leases: list[tuple[float, str | None]] = field(default_factory=list)

    def wrap(self, obj: object, method: str, step: str) -> None:
        inner: Callable[..., Awaitable[Any]] = getattr(obj, method)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await inner(*args, **kwargs)
            finally:
                self.seconds[step] += time.perf_counter() - started
            if step == "lease":
                self.leases.append((started, result[0].sha256 if result else None))
            return result

        # An instance attribute: the Rescanner calls the wrapper, fileshare's code is as is.
        setattr(obj, method, timed)

    def reset(self) -> None:
        self.seconds = dict.fromkeys(STEPS, 0.0)
        self.leases = []

    def per_content(self) -> dict[str, float]:
        """Each content's own time: from its lease call to the next one."""
        return {
            sha: later - started
            for (started, sha), (later, _) in zip(self.leases, self.leases[1:], strict=False)
            if sha is not None
        }


@dataclass
class Pass:
    """A clamd-alone pass: the seconds spent on each item, and in all until the last byte
    was sent and from then to the verdict (clamd scans once it has the whole stream)."""

    times: list[float]
    sent: float = 0.0
    verdict: float = 0.0


async def clamd_pass(app: web.Application, items: list[Item], order: list[int]) -> Pass:
    """INSTREAM the stored bytes of ``items[i]`` for each ``i`` of ``order``, one at a
    time, read from the store's directory in 1 MiB chunks (blocking reads on the loop: the
    files are in the page cache, and this is the floor)."""
    scanner = app[SCANNER]
    done = Pass([0.0] * len(items))
    for i in order:
        started = time.perf_counter()
        session = await scanner.open()
        try:
            with items[i].path.open("rb") as f:
                while chunk := f.read(READ_CHUNK):
                    await session.feed(chunk)
            sent = time.perf_counter()
            verdict = await session.verdict()
        finally:
            await session.cancel()
        if not verdict.clean:
            raise RuntimeError(f"clamd found {verdict.signature} in random bytes")
        now = time.perf_counter()
        done.times[i] += now - started
        done.sent += sent - started
        done.verdict += now - sent
    return done


def per_file_order(items: list[Item], seed: int) -> list[int]:
    """Each item once per record, shuffled: a per-file rescan goes by the records' age, not
    by content, so the same bytes seldom come twice in a row (warm caches)."""
    order = [i for i, item in enumerate(items) for _ in range(item.refs)]
    random.Random(seed).shuffle(order)
    return order


async def fileshare_pass(rescanner: Rescanner, steps: Steps, items: list[Item]) -> None:
    steps.reset()
    report = await rescanner.run(scanned_before=rescanner.clock())
    if (
        report.failed
        or len(report.clean) != len(items)
        or set(report.clean) != {i.sha256 for i in items}
    ):
        raise RuntimeError(
            f"rescan: {len(report.clean)} clean of {len(items)}, failed {report.failed}, "
            f"infected {report.infected}, unscannable {report.unscannable}"
        )


def cli_pass(env: dict[str, str], clean: int, *extra: str) -> dict[str, Any]:
    """``fileshare rescan --all`` as an operator runs it (which must find ``clean``
    contents clean): its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [_python(), "-m", "fileshare", "rescan", "--all", *extra],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=OP_TIMEOUT * max(clean, 1),
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    answer = json.loads(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
    if out.returncode != 0 or answer.get("clean") != clean:
        raise RuntimeError(f"fileshare rescan: exit {out.returncode} {out.stdout}{out.stderr}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"cpu": {"fileshare": round(cpu, 3)}}


def machine_busy() -> float:
    return machine_cpu()["busy"]


def stage_sums(app: web.Application) -> dict[str, float]:
    """fileshare's own pipeline stage totals so far (its metrics): a rescan's read, hash
    and send (``transfer``) and its wait for clamd's answer after the last byte."""
    registry = app[METRICS].registry
    name = "fileshare_upload_stage_duration_seconds_sum"
    return {s: registry.get_sample_value(name, {"stage": s}) or 0.0 for s in SCAN_STAGES}


async def measure(
    app: web.Application, env: dict[str, str], items: list[Item], plan: Plan, clamd: Clamd
) -> list[dict[str, Any]]:
    rescanner = app[RESCANNER]
    steps = Steps()
    steps.wrap(rescanner.index, "lease_rescans", "lease")
    steps.wrap(rescanner.index, "record_rescan", "record")
    steps.wrap(rescanner.storage, "head", "head")
    steps.wrap(rescanner.pipeline, "scan_stored", "scan_stored")
    meter = CpuMeter({"bench": os.getpid(), "clamd": clamd.pid})
    per_content, per_file = list(range(len(items))), per_file_order(items, plan.seed)
    # Warm-up (not recorded): clamd's first scans, the index's first rescan transactions.
    await clamd_pass(app, items, per_content[:8])
    await rescanner.run(scanned_before=rescanner.clock(), limit=8)

    async def clamd_alone(order: list[int]) -> dict[str, Any]:
        done = await clamd_pass(app, items, order)
        return {"sent": done.sent, "verdict": done.verdict, "times": done.times}

    async def fileshare() -> dict[str, Any]:
        before = stage_sums(app)
        await fileshare_pass(rescanner, steps, items)
        after = stage_sums(app)
        by_content = steps.per_content()
        return {
            "steps": steps.seconds | {s: after[s] - before[s] for s in SCAN_STAGES},
            "times": [by_content.get(i.sha256, math.nan) for i in items],
        }

    async def cli() -> dict[str, Any]:
        return await asyncio.to_thread(cli_pass, env, len(items))

    passes: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "b": lambda: clamd_alone(per_content),
        "a": fileshare,
        "cli": cli,
        "c": lambda: clamd_alone(per_file),
    }
    runs = []
    for r in range(plan.runs):
        # A new order every run, so that a drift of a shared machine hits each pass alike.
        order = list(passes)[r % len(passes) :] + list(passes)[: r % len(passes)]
        run: dict[str, Any] = {"order": order}
        for key in order:
            meter.start()
            busy = machine_busy()
            started = time.perf_counter()
            found = await passes[key]()
            seconds = time.perf_counter() - started
            cpu = meter.stop() | found.pop("cpu", {})
            # Busy time of the machine that no measured process spent: other work.
            cpu["others"] = round(machine_busy() - busy - sum(cpu.values()), 3)
            run[key] = _rounded(found | {"seconds": seconds, "cpu": cpu})
        # The command's own start-up and shutdown: the same command rescanning nothing.
        started = time.perf_counter()
        await asyncio.to_thread(cli_pass, env, 0, "--limit", "0")
        run["cli_start_up"] = round(time.perf_counter() - started, 4)
        runs.append(run)
        progress(
            f"run {r + 1}/{plan.runs}: "
            + ", ".join(f"{k} {run[k]['seconds']:.2f} s" for k in order)
            + f" (others {sum(run[k]['cpu']['others'] for k in order):.1f} CPU-s)"
        )
    return runs


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


# --------------------------------------------------------------------------- summary


def summarize(runs: list[dict[str, Any]], items: list[Item]) -> dict[str, Any]:
    n, files = len(items), sum(i.refs for i in items)
    content_bytes = sum(i.size for i in items)
    file_bytes = sum(i.size * i.refs for i in items)
    rows: dict[str, dict[str, Any]] = {}
    for key, _ in ROWS:
        seconds = median([r[key]["seconds"] for r in runs])
        scans, volume = (files, file_bytes) if key == "c" else (n, content_bytes)
        cpu = {p: median([r[key]["cpu"][p] for r in runs]) for p in runs[0][key]["cpu"]}
        rows[key] = {
            "seconds": seconds,
            "scans_per_s": scans / seconds,
            "mib_per_s": volume / MiB / seconds,
            "cpu": cpu,
        }
    a, b, c = rows["a"]["seconds"], rows["b"]["seconds"], rows["c"]["seconds"]
    # A per-file rescan scans each content once per record: the sum over records of the
    # time each content's scan took, per run; fileshare's from (a)'s time per content.
    by_file = {
        k: median(
            [sum(t * i.refs for t, i in zip(r[k]["times"], items, strict=True)) for r in runs]
        )
        for k in ("a", "b")
    }
    steps = {s: median([r["a"]["steps"][s] for r in runs]) / n for s in STEPS}
    steps["other"] = a / n - sum(steps.values())
    scan = {s: median([r["a"]["steps"][s] for r in runs]) / n for s in SCAN_STAGES}
    scan["rest"] = steps["scan_stored"] - sum(scan.values())
    clamd = {s: median([r["b"][s] for r in runs]) / n for s in ("sent", "verdict")}
    return {
        "rows": rows,
        "fileshare_over_clamd": a / b,
        "cli_over_clamd": rows["cli"]["seconds"] / b,
        "cli_start_up_s": median([r["cli_start_up"] for r in runs]),
        "per_file": {
            "scans": files,
            "scans_per_content": n,
            "bytes": file_bytes,
            "bytes_per_content": content_bytes,
            "clamd_measured_s": c,
            "clamd_estimated_from_bytes_s": file_bytes / MiB / rows["b"]["mib_per_s"],
            "clamd_estimated_per_content_s": by_file["b"],
            "fileshare_estimated_s": by_file["a"],
            "fileshare_saved_s": by_file["a"] - a,
            "time_saving": c / b,
        },
        "steps_ms_per_content": {k: round(1000 * v, 3) for k, v in steps.items()},
        "scan_stored_ms_per_content": {k: round(1000 * v, 3) for k, v in scan.items()},
        "clamd_ms_per_content": {"all": 1000 * b / n} | {k: 1000 * v for k, v in clamd.items()},
    }


def describe(items: list[Item], plan: Plan) -> dict[str, Any]:
    refs = sorted((i.refs for i in items), reverse=True)
    return {
        "contents": len(items),
        "files": sum(refs),
        "files_per_content": sum(refs) / len(items),
        "content_mib": sum(i.size for i in items) / MiB,
        "file_mib": sum(i.size * i.refs for i in items) / MiB,
        "sizes": f"log-uniform {SMALLEST // KiB} KiB-{LARGEST // MiB} MiB",
        "refs": f"1 each + {plan.files - plan.contents} drawn Zipf(s={plan.zipf}) over ranks",
        "most_referenced": refs[:5],
        "referenced_once": sum(1 for r in refs if r == 1),
        "owners": OWNERS,
    }


def render(results: dict[str, Any]) -> str:
    meta, corpus, s = results["meta"], results["corpus"], results["summary"]
    pf, rows = s["per_file"], s["rows"]
    lines = [
        f"fileshare rescan benchmark: {meta['cpus']} CPUs, {meta['clamd']}, commit "
        f"{meta['commit']}{'+dirty' if meta.get('uncommitted') else ''}, "
        f"{meta.get('duration_s', 0):.1f} s",
        f"corpus: {corpus['contents']} contents ({corpus['sizes']}, {corpus['content_mib']:.0f} "
        f"MiB), {corpus['files']} file records ({corpus['refs']}; most referenced "
        f"{corpus['most_referenced']}, {corpus['referenced_once']} contents referenced once), "
        f"{corpus['files_per_content']:.2f} files per content, {corpus['file_mib']:.0f} MiB "
        "per file",
        f"medians of {meta['plan']['runs']} runs; one scan at a time; MiB/s = 2^20 B/s",
        "",
        f"{'':42}{'wall s':>8}{'scans/s':>9}{'MiB/s':>8}   CPU s: fileshare  clamd  others",
    ]
    for key, label in ROWS:
        row = rows[key]
        cpu = row["cpu"]
        mine = cpu.get("fileshare", cpu["bench"])
        lines.append(
            f"{label:42}{row['seconds']:8.2f}{row['scans_per_s']:9.1f}{row['mib_per_s']:8.1f}"
            f"{mine:18.2f}{cpu['clamd']:7.2f}{cpu['others']:8.2f}"
        )
    st, sc, cl = (
        s["steps_ms_per_content"],
        s["scan_stored_ms_per_content"],
        s["clamd_ms_per_content"],
    )
    lines += [
        "",
        f"(a) / (b): fileshare's rescan takes {s['fileshare_over_clamd']:.2f} x clamd alone "
        f"(the CLI {s['cli_over_clamd']:.2f} x; the CLI rescanning nothing, --limit 0, takes "
        f"{s['cli_start_up_s']:.2f} s)",
        f"(a) per content, ms: lease {st['lease']:.2f}, head {st['head']:.2f}, scan_stored "
        f"{st['scan_stored']:.2f} (transfer {sc['transfer']:.2f} + verdict wait "
        f"{sc['verdict_wait']:.2f} + {sc['rest']:.2f}), record {st['record']:.2f}, other "
        f"{st['other']:.2f}",
        f"(b) per content, ms: {cl['all']:.2f} (last byte sent {cl['sent']:.2f} + verdict "
        f"{cl['verdict']:.2f})",
        "",
        "Per content instead of per file record:",
        f"  scans       {pf['scans_per_content']} instead of {pf['scans']} "
        f"({pf['scans'] / pf['scans_per_content']:.2f} x fewer)",
        f"  bytes       {pf['bytes_per_content'] / MiB:.0f} MiB instead of "
        f"{pf['bytes'] / MiB:.0f} MiB ({pf['bytes'] / pf['bytes_per_content']:.2f} x fewer)",
        f"  clamd time  (c) {pf['clamd_measured_s']:.2f} s instead of (b) "
        f"{rows['b']['seconds']:.2f} s ({pf['time_saving']:.2f} x); estimated: per-file bytes "
        f"/ (b)'s MiB/s {pf['clamd_estimated_from_bytes_s']:.2f} s, sum of (b)'s times "
        f"x records {pf['clamd_estimated_per_content_s']:.2f} s",
        f"  fileshare   per file (sum of (a)'s time per content x records, estimated) "
        f"{pf['fileshare_estimated_s']:.2f} s instead of (a) {rows['a']['seconds']:.2f} s: "
        f"{pf['fileshare_saved_s']:.2f} s saved",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- driver


def fileshare_env(clamd: Clamd, data_dir: Path) -> dict[str, str]:
    return {
        "FILESHARE_STORAGE": "local",
        "FILESHARE_DATA_DIR": str(data_dir),
        "FILESHARE_UNSCANNED_BUCKET": UNSCANNED,
        "FILESHARE_PERMANENT_BUCKET": PERMANENT,
        "FILESHARE_CLAMD": clamd.address,
        "FILESHARE_MAX_UPLOAD_SIZE": str(clamd.max_stream),
        "FILESHARE_CLAMD_MAX_SCANS": str(CLAMD_MAX_SCANS),
        "FILESHARE_CLAMD_VERDICT_TIMEOUT": str(OP_TIMEOUT),
        "FILESHARE_API_KEYS": "bench:bench-key-0123456789abcdef",
        # No periodic round: the benchmark runs every one itself.
        "FILESHARE_RESCAN_INTERVAL": "0",
        "FILESHARE_LOG_FORMAT": "json",
        "FILESHARE_LOG_LEVEL": "WARNING",
    }


async def bench(plan: Plan, clamd: Clamd, data_dir: Path) -> dict[str, Any]:
    """Seed the corpus, measure it ``plan.runs`` times: the corpus and the runs."""
    env = fileshare_env(clamd, data_dir)
    settings = load_settings(env)
    runner = web.AppRunner(create_app(settings), handle_signals=False)
    await runner.setup()
    try:
        started = time.perf_counter()
        items = await seed(runner.app, plan, data_dir)
        progress(
            f"seeded {len(items)} contents, {plan.files} records in "
            f"{time.perf_counter() - started:.1f} s"
        )
        cli_env = {k: v for k, v in os.environ.items() if not k.startswith("FILESHARE_")}
        runs = await measure(runner.app, cli_env | env, items, plan, clamd)
    finally:
        await runner.cleanup()
    return {"items": items, "runs": runs}


def run_on(plan: Plan, clamd: Clamd) -> dict[str, Any]:
    """The whole benchmark on a running clamd (``main``'s and the smoke test's entry)."""
    with tempfile.TemporaryDirectory(prefix="bench-rescan-") as tmp:
        found = asyncio.run(bench(plan, clamd, Path(tmp)))
    items: list[Item] = found["items"]
    return {
        "corpus": describe(items, plan)
        | {"items": [{"sha256": i.sha256, "size": i.size, "refs": i.refs} for i in items]},
        "runs": found["runs"],
        "summary": summarize(found["runs"], items),
    }


def _git(*args: str) -> str:
    """A git answer about this tree ("" outside a repository, e.g. a ``git archive``):
    the commit, and what of fileshare/ differs from it (others' work is measured too)."""
    out = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() if out.returncode == 0 else ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rescan", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="48 contents, 144 files, 2 runs")
    parser.add_argument("--contents", type=int, help="unique contents (400; quick 48)")
    parser.add_argument("--files", type=int, help="file records (3 per content)")
    parser.add_argument("--runs", type=int, help="runs (3; quick 2)")
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent (1.0)")
    parser.add_argument("--seed", type=int, default=1, help="corpus seed (1)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON ({RESULTS})")
    args = parser.parse_args(argv)
    args.contents = args.contents or (48 if args.quick else 400)
    args.files = args.files or 3 * args.contents
    args.runs = args.runs or (2 if args.quick else 3)
    if min(args.contents, args.runs) < 1 or args.files < args.contents:
        parser.error("--contents and --runs must be at least 1, --files at least --contents")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(args.contents, args.files, args.runs, args.zipf, args.seed)
    started = time.perf_counter()
    configure_logging("json", "WARNING")  # fileshare's, in this process: quiet
    try:
        with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            progress("starting clamd (DisableCache yes)...")
            clamd = stack.enter_context(Clamd(max_stream=MAX_UPLOAD, disable_cache=True))
            version = clamd_command(clamd.host, clamd.port, b"VERSION").decode(errors="replace")
            results = run_on(plan, clamd)
    except KeyboardInterrupt:
        progress("interrupted: servers stopped, nothing written")
        return 130
    results["meta"] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _git("rev-parse", "--short", "HEAD") or "unknown",
        "uncommitted": _git("status", "--porcelain", "--", "fileshare").splitlines(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "clamd": version.split("/")[0],
        "clamd_version": version,
        "plan": asdict(plan),
        "duration_s": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    progress(f"results written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
