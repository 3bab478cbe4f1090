"""Medians, ratios against the targets, and the text tables."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import Plan, Results

MiB = 1024 * 1024

S3_SCENARIOS: list[tuple[str, str]] = [
    ("a", "(a)  direct multipart PUT, 8 MiB parts"),
    ("a1", "(a1) direct single PutObject"),
    ("b", "(b)  clamd INSTREAM alone"),
    ("f", "(f)  (a) + (b) at once: the limit"),
    ("f2", "(f2) (a) + (b) in lock-step, 1 MiB steps"),
    ("c", "(c)  seed: stage, read back+scan, copy"),
    ("d", "(d)  fileshare POST /v1/files"),
    ("w", "(w)  the same, single-write promotion"),
    ("e", "(e)  fileshare re-upload (dedup)"),
    ("e2", "(e') re-upload with Content-Digest"),
]
GCS_SCENARIOS: list[tuple[str, str]] = [
    ("g_simple", "direct simple upload (media)"),
    ("g_resumable", "direct resumable, 8 MiB chunks"),
    ("b", "clamd INSTREAM alone"),
    ("g_both", "upload + clamd at once: the limit"),
    ("d", "fileshare POST /v1/files"),
    ("w", "the same, single-write promotion"),
    ("e", "fileshare re-upload (dedup)"),
    ("e2", "re-upload with Content-Digest"),
]
CPU_PROCESSES = {
    "s3": ["bench", "fileshare", "seaweedfs", "clamd"],
    "gcs": ["bench", "fileshare", "fake-gcs", "clamd"],
}


def size_label(size: int) -> str:
    return f"{size // MiB} MiB" if size % MiB == 0 else f"{size} B"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _seconds(runs: list[dict[str, Any]]) -> float | None:
    return median([r["seconds"] for r in runs]) if runs else None


def run_line(by_scenario: dict[str, list[dict[str, Any]]], run: int) -> str:
    """One run's seconds per scenario, for the progress output."""
    parts = []
    for name, runs in by_scenario.items():
        if len(runs) > run:
            parts.append(f"{name} {runs[run]['seconds']:.3f}")
    return ", ".join(parts)


def medians(results: Results) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for section, sizes in results.runs.items():
        for size, scenarios in sizes.items():
            for scenario, runs in scenarios.items():
                value = _seconds(runs)
                if value is not None:
                    out.setdefault(section, {}).setdefault(size, {})[scenario] = round(value, 4)
    return out


def _ratio(
    name: str, num: float | None, den: float | None, target: float | None, op: str
) -> dict[str, Any] | None:
    if num is None or den is None or den <= 0:
        return None
    value = num / den
    met: bool | None = None
    if target is not None:
        met = value <= target if op == "<=" else value >= target
    return {"name": name, "value": round(value, 3), "target": target, "op": op, "met": met}


def summarize(results: Results, plan: Plan) -> dict[str, Any]:
    med = medians(results)
    ratios: list[dict[str, Any]] = []

    def add(item: dict[str, Any] | None) -> None:
        if item is not None and all(r["name"] != item["name"] for r in ratios):
            ratios.append(item)

    s3 = med.get("s3", {})
    measured = [s for s in plan.sizes if size_label(s) in s3]
    if measured:
        big = size_label(max(measured))
        m = s3[big]
        add(_ratio(f"(d)/(f) at {big}", m.get("d"), m.get("f"), 1.25, "<="))
        add(_ratio(f"(c)/(d) at {big}", m.get("c"), m.get("d"), 1.5, ">="))
        add(_ratio(f"(d)/(f2) at {big}", m.get("d"), m.get("f2"), None, "<="))
        add(_ratio(f"(w)/(f2) at {big}", m.get("w"), m.get("f2"), 1.03, "<="))
        add(_ratio(f"all-process CPU (w)/(f2) at {big}", *_cpu(results, big, "w", "f2"), 1.1, "<="))
        add(
            _ratio(f"all-process CPU (d)/(f2) at {big}", *_cpu(results, big, "d", "f2"), None, "<=")
        )
        for scenario in ("d", "w"):
            per_gib = _fileshare_cpu_per_gib(results, "s3", big, scenario)
            add(_ratio(f"fileshare CPU-s per GiB, ({scenario}) at {big}", per_gib, 1.0, 2.0, "<="))
        add(_ratio(f"(w)/(d) at {big}", m.get("w"), m.get("d"), None, "<="))
        add(_ratio(f"(c)/(f) at {big}", m.get("c"), m.get("f"), None, ">="))
        after = _field(results, "s3", big, "b", "after_last_byte_s")
        if m.get("a") is not None and after is not None:
            floor = m["a"] + after
            add(_ratio(f"(d)/((a) + scan after end) at {big}", m.get("d"), floor, None, "<="))
        for size in measured:
            m = s3[size_label(size)]
            add(_ratio(f"(e)/(a) at {size_label(size)}", m.get("e"), m.get("a"), 1.1, "<="))
        for size in measured:
            m = s3[size_label(size)]
            label = size_label(size)
            add(_ratio(f"(e')/(a) at {label}", m.get("e2"), m.get("a"), None, "<="))
            add(_ratio(f"(d)/(f) at {label}", m.get("d"), m.get("f"), None, "<="))
            add(_ratio(f"(d)/(a) at {label}", m.get("d"), m.get("a"), None, "<="))
            add(_ratio(f"(d)/(b) at {label}", m.get("d"), m.get("b"), None, "<="))
    rss = _rss(results, plan)
    conc = results.concurrency
    if conc.get("fileshare") and conc.get("direct_put"):
        f, d = conc["fileshare"]["per_s"], conc["direct_put"]["per_s"]
        add(_ratio("concurrent uploads/s: fileshare / direct PUT", f, d, None, ">="))
        if conc.get("direct_put_and_scan"):
            p = conc["direct_put_and_scan"]["per_s"]
            add(_ratio("concurrent uploads/s: fileshare / (PUT + scan)", f, p, 0.9, ">="))
            if conc.get("fileshare_w"):
                w = conc["fileshare_w"]["per_s"]
                name = "concurrent uploads/s: single-write / (PUT + scan)"
                add(_ratio(name, w, p, 0.9, ">="))
    gcs = med.get("gcs", {})
    for size in plan.gcs_sizes:
        label = size_label(size)
        if label not in gcs:
            continue
        m = gcs[label]
        directs = [v for k, v in m.items() if k in ("g_simple", "g_resumable")]
        best = min(directs) if directs else None
        add(_ratio(f"GCS {label}: fileshare / best direct", m.get("d"), best, None, "<="))
        add(
            _ratio(
                f"GCS {label}: fileshare / (upload + clamd)",
                m.get("d"),
                m.get("g_both"),
                None,
                "<=",
            )
        )
        name = f"GCS {label}: single-write / (upload + clamd)"
        add(_ratio(name, m.get("w"), m.get("g_both"), 1.1 if size == 64 * MiB else None, "<="))
        add(_ratio(f"GCS {label}: re-upload / best direct", m.get("e"), best, None, "<="))
        add(_ratio(f"GCS {label}: re-upload+digest / best direct", m.get("e2"), best, None, "<="))
    targets = [r for r in ratios if r["target"] is not None]
    if measured:
        big = size_label(max(measured))
        peak = rss.get(f"s3 d {big}")
        if peak is not None:
            targets.append(
                {
                    "name": f"fileshare peak RSS growth, {big} upload (MiB, max of runs)",
                    "value": round(peak["max_bytes"] / MiB, 1),
                    "target": round(rss["limit_bytes"] / MiB, 1),
                    "op": "<=",
                    "met": peak["met"],
                }
            )
    return {"medians_s": med, "targets": targets, "ratios": ratios, "rss": rss}


def _cpu(results: Results, size: str, num: str, den: str) -> tuple[float | None, float | None]:
    """Median all-process CPU seconds of two S3 scenarios at ``size``."""

    def total(scenario: str) -> float | None:
        runs = results.runs.get("s3", {}).get(size, {}).get(scenario, [])
        return median([sum(r["cpu"].values()) for r in runs]) if runs else None

    return total(num), total(den)


def _fileshare_cpu_per_gib(
    results: Results, section: str, size: str, scenario: str
) -> float | None:
    runs = results.runs.get(section, {}).get(size, {}).get(scenario, [])
    if not runs:
        return None
    return median([r["cpu"].get("fileshare", 0.0) for r in runs]) * 1024 * MiB / _size_of(size)


def _field(results: Results, section: str, size: str, scenario: str, name: str) -> float | None:
    runs = results.runs.get(section, {}).get(size, {}).get(scenario, [])
    values = [r[name] for r in runs if r.get(name) is not None]
    return median(values) if values else None


def _rss(results: Results, plan: Plan) -> dict[str, Any]:
    """Peak RSS growth of fileshare during its uploads, per size (max over runs)."""
    limit = 4 * plan.part_size + 32 * MiB
    out: dict[str, Any] = {"limit_bytes": limit}
    for section, sizes in results.runs.items():
        for size, scenarios in sizes.items():
            for scenario in ("d", "w", "e"):
                growths = [
                    r["rss_growth"]
                    for r in scenarios.get(scenario, [])
                    if r.get("rss_growth") is not None
                ]
                if growths:
                    key = f"{section} {scenario} {size}"
                    out[key] = {
                        "max_bytes": max(growths),
                        "median_bytes": int(median(growths)),
                        "met": max(growths) <= limit,
                    }
    return out


# ---------------------------------------------------------------------------- text


def _cell(runs: list[dict[str, Any]] | None, size: int) -> str:
    if not runs:
        return "-"
    seconds = median([r["seconds"] for r in runs])
    return f"{seconds:7.3f} s {size / seconds / 1e6:5.0f} MB/s"


def _size_of(label: str) -> int:
    return int(label.split()[0]) * MiB


def _table(
    title: str,
    scenarios: list[tuple[str, str]],
    by_size: dict[str, dict[str, list[dict[str, Any]]]],
) -> list[str]:
    labels = list(by_size)
    width = max(len(d) for _, d in scenarios) + 2
    lines = [title, " " * width + "".join(f"{label:>22}" for label in labels)]
    for key, description in scenarios:
        cells = [_cell(by_size[label].get(key), _size_of(label)) for label in labels]
        if any(c != "-" for c in cells):
            lines.append(f"{description:<{width}}" + "".join(f"{c:>22}" for c in cells))
    return lines


def _cpu_table(
    section: str,
    scenarios: list[tuple[str, str]],
    by_size: dict[str, dict[str, list[dict[str, Any]]]],
) -> list[str]:
    label = max(by_size, key=_size_of)
    procs = CPU_PROCESSES[section]
    width = max(len(d) for _, d in scenarios) + 2
    header = "".join(f"{p:>11}" for p in [*procs, "total", "wall"])
    lines = [f"CPU seconds per run at {label} (medians; 2 cores = 2 CPU-s per wall second)"]
    lines.append(" " * width + header)
    for key, description in scenarios:
        runs = by_size[label].get(key)
        if not runs:
            continue
        values = [median([r["cpu"].get(p, 0.0) for r in runs]) for p in procs]
        total = median([sum(r["cpu"].values()) for r in runs])
        wall = median([r["seconds"] for r in runs])
        cells = "".join(f"{v:11.2f}" for v in [*values, total, wall])
        lines.append(f"{description:<{width}}{cells}")
    return lines


def _breakdown(section: str, by_size: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    lines = ["Where the time goes (medians)"]
    for label, scenarios in by_size.items():
        parts: list[str] = []
        if runs := scenarios.get("b"):
            last = median([r["last_byte_s"] for r in runs])
            after = median([r["after_last_byte_s"] for r in runs])
            parts.append(f"clamd last byte {last:.3f} s + verdict {after:.3f} s later")
        if runs := scenarios.get("f") or scenarios.get("g_both"):
            put = median([r["put_s"] for r in runs])
            sc = median([r["scan_s"] for r in runs])
            parts.append(f"limit: put {put:.3f} s / scan {sc:.3f} s")
        if runs := scenarios.get("f2"):
            last = median([r["last_byte_s"] for r in runs])
            after = median([r["after_last_byte_s"] for r in runs])
            parts.append(f"lock-step: last byte {last:.3f} s + {after:.3f} s")
        if runs := scenarios.get("c"):
            steps = ("stage_s", "head_s", "read_scan_s", "copy_s", "delete_s")
            parts.append(
                "seed: " + " + ".join(f"{s[:-2]} {median([r[s] for r in runs]):.3f}" for s in steps)
            )
        for key, who in (("d", "fileshare server"), ("w", "single-write server")):
            if runs := scenarios.get(key):
                st = runs[0]["server_stages"].keys()
                parts.append(
                    f"{who}: "
                    + ", ".join(
                        f"{k[:-2]} {median([r['server_stages'][k] for r in runs]):.3f}" for k in st
                    )
                )
        for key in ("e", "e2"):
            if runs := scenarios.get(key):
                scanned = sum(1 for r in runs if r.get("scanned"))
                parts.append(f"{key}: scanned again in {scanned}/{len(runs)} runs")
        lines.append(f"  {label}:")
        lines += [f"    {p}" for p in parts]
    return lines


def _mib(value: float) -> str:
    return f"{value / MiB:.1f} MiB"


def render(results: Results, plan: Plan) -> str:
    meta = results.meta
    runs_s3 = ", ".join(f"{size_label(s)} x{n}" for s, n in plan.runs.items())
    runs_gcs = ", ".join(f"{size_label(s)} x{n}" for s, n in plan.gcs_runs.items())
    counts = [
        f"S3 {runs_s3}" if "s3" in results.runs else "",
        "" if "gcs" not in results.runs else f"GCS {runs_gcs}",
    ]
    out = [
        "",
        f"fileshare benchmark{' (quick)' if plan.quick else ''}: {meta.get('cpus')} CPUs, "
        f"{meta.get('clamd', '?')}, commit {meta.get('commit', '?')}, "
        f"{meta.get('duration_s', '?')} s",
        f"medians of: {'; '.join(c for c in counts if c)}. MB/s = 10^6 bytes/s.",
        "",
    ]
    if "s3" in results.runs:
        by_size = results.runs["s3"]
        out += [*_table("S3 (SeaweedFS `weed mini`)", S3_SCENARIOS, by_size), ""]
        out += [*_cpu_table("s3", S3_SCENARIOS, by_size), ""]
        out += [*_breakdown("s3", by_size), ""]
    conc = results.concurrency
    if conc:
        out.append(
            f"Concurrency: {conc['uploads']} uploads of {size_label(conc['size'])}, "
            f"{conc['clients']} clients at once (S3)"
        )
        for key, text in (
            ("direct_put", "direct PutObject"),
            ("direct_put_and_scan", "direct PutObject + clamd INSTREAM"),
            ("fileshare", "fileshare POST /v1/files"),
            ("fileshare_w", "the same, single-write promotion"),
        ):
            if key in conc:
                c = conc[key]
                cpu = ", ".join(f"{p} {v:.1f}" for p, v in c["cpu"].items())
                out.append(f"  {text:<36}{c['per_s']:8.1f} /s   (CPU s: {cpu})")
                if c.get("rss_growth") is not None:
                    out.append(f"  {'':<36}fileshare peak RSS growth {_mib(c['rss_growth'])}")
        out.append("")
    if "gcs" in results.runs:
        by_size = results.runs["gcs"]
        out += [*_table("GCS (fake-gcs-server, memory backend)", GCS_SCENARIOS, by_size), ""]
        out += [*_cpu_table("gcs", GCS_SCENARIOS, by_size), ""]
        out += [*_breakdown("gcs", by_size), ""]
    summary = results.summary
    out.append("Targets (ratios of medians)")
    for r in summary.get("targets", []):
        state = "met" if r["met"] else "MISSED"
        out.append(f"  {r['name']:<58}{r['value']:7.2f}   {r['op']} {r['target']:<5} {state}")
    out.append("")
    out.append("Other ratios (of medians)")
    for r in summary.get("ratios", []):
        if r["target"] is None:
            out.append(f"  {r['name']:<58}{r['value']:7.2f}")
    rss = summary.get("rss", {})
    limit = rss.get("limit_bytes", 0)
    out.append("")
    out.append(f"fileshare peak RSS growth during an upload (target <= {_mib(limit)})")
    for key, value in rss.items():
        if key == "limit_bytes":
            continue
        state = "met" if value["met"] else "MISSED"
        out.append(
            f"  {key:<28} max {_mib(value['max_bytes']):>10}  "
            f"median {_mib(value['median_bytes']):>10}   {state}"
        )
    if meta.get("interrupted") or meta.get("error"):
        out.append(f"\nINCOMPLETE: {meta.get('error') or 'interrupted'}")
    return "\n".join(out)
