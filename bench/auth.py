"""Bearer tokens against API keys: what authenticating with a JWT costs an upload.

    .venv/bin/python -m bench.auth [--uploads 200] [--clients 16] [--rounds 15] [--warmup 48]

One ``fileshare serve`` process (``FILESHARE_STORAGE=local``, the SQLite index, one clamd with
``DisableCache yes``) configured with a bootstrap API key *and* a trusted issuer whose JWKS
(one ES256 key) a small HTTP server in this process serves on 127.0.0.1. Each round sends a
batch of ``--uploads`` POST /v1/files of ``--size`` fresh random bytes from ``--clients``
concurrent clients with the API key, then a batch with ES256 tokens (one per client, signed
here), the order swapped every round; ``--warmup`` uploads per side before (not recorded: the
first token also fetches the JWKS). For every batch: uploads/s and the CPU seconds of
fileshare, clamd and this process. The ratio JWT/key is per round; the target is a median
≥ 0.95.

Before that, in this process: the validator alone, with the key at hand, for ES256 and
RS256 in µs per token: ``JwtAuthenticator.authenticate`` on tokens it has not seen (the
signature verified), on a token it remembers, and ``jwt.decode`` by itself.

The token endpoint's tokens/s (``POST /oauth/token``) is ``bench/tokens.py``'s.

Prints markdown tables and writes JSON to ``bench/results/auth.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/auth.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from bench.clients import FileshareClient, bounded
from bench.procs import REPO, CpuMeter, FileshareServer
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
from fileshare.auth.jwt import JwtAuthenticator
from fileshare.auth.trust import TrustedIssuer
from tests.servers import HOST, Clamd

RESULTS = REPO / "bench" / "results" / "auth.json"
TARGET = 0.95
SIDES = ("key", "jwt")
ISSUER = "https://idp.bench.test/"
AUDIENCE = "fileshare-bench"
CLAMD_MAX_THREADS = 4


# --------------------------------------------------------------------------- the IdP


class Jwks:
    """A JWKS on 127.0.0.1, served by a thread (it must answer fileshare whichever event
    loop of this process is running), counting its fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        body = json.dumps(document).encode()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.fetches = 0
        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}/jwks.json"

    def __enter__(self) -> Jwks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def es256_key() -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {
        "kid": "bench-es256",
        "alg": "ES256",
        "use": "sig",
    }
    return key, jwk


def token(key: Any, alg: str, kid: str, client: int, lifetime: int = 3600) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        # The API key's principal: both sides upload as the same owner, so that only the
        # credential differs (each client has a token of its own).
        "sub": "bench",
        "jti": f"bench-{client}",
        "iat": now,
        "exp": now + lifetime,
        "scope": "files:read files:write",
    }
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


# ------------------------------------------------------------------ validator alone


class StaticKeys:
    def __init__(self, key: jwt.PyJWK) -> None:
        self._key = key

    async def key(self, kid: str | None) -> jwt.PyJWK | None:
        return self._key if kid == self._key.key_id else None


def validator_cost(n: int = 2000) -> dict[str, dict[str, float]]:
    """µs per token, with the key at hand: the authenticator on a token it has not seen
    (signature verified), on one it has (remembered), and jwt.decode alone."""
    out: dict[str, dict[str, float]] = {}
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True) | {
        "kid": "bench-rs256",
        "alg": "RS256",
    }
    es_key, es_jwk = es256_key()
    for alg, private, jwk in (("ES256", es_key, es_jwk), ("RS256", rsa_key, rsa_jwk)):
        public = jwt.PyJWK(jwk)
        auth = JwtAuthenticator(
            [
                TrustedIssuer(
                    issuer=ISSUER,
                    audiences=(AUDIENCE,),
                    algorithms=(alg,),
                    keys=StaticKeys(public),
                )
            ]
        )
        fresh = [token(private, alg, jwk["kid"], c) for c in range(n)]
        tok = fresh[0]

        async def whole(tokens: list[str], auth: JwtAuthenticator = auth) -> float:
            started = time.perf_counter()
            for t in tokens:
                await auth.authenticate(t)
            return time.perf_counter() - started

        asyncio.run(whole([token(private, alg, jwk["kid"], -c) for c in range(1, 50)]))  # warm
        first = asyncio.run(whole(fresh))
        again = asyncio.run(whole([tok] * n))
        started = time.perf_counter()
        for _ in range(n):
            jwt.decode(
                tok,
                public,
                algorithms=[alg],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        decode = time.perf_counter() - started
        out[alg] = {
            "first_us": round(1e6 * first / n, 1),
            "remembered_us": round(1e6 * again / n, 1),
            "jwt_decode_us": round(1e6 * decode / n, 1),
        }
        progress(f"validator {alg}: {out[alg]}")
    return out


# ------------------------------------------------------------------------ measuring


@dataclass
class Plan:
    uploads: int
    clients: int
    size: int
    rounds: int
    warmup: int


async def batch(clients: Sequence[FileshareClient], n: int, size: int) -> float:
    """``n`` fresh uploads, upload ``i`` by client ``i mod len(clients)`` with at most
    ``len(clients)`` at once; wall seconds. Every answer must be a 201."""
    blobs = [os.urandom(size) for _ in range(n)]

    async def one(i: int) -> None:
        status, body = await clients[i % len(clients)].upload(blobs[i])
        if status != 201 or body.get("size") != size:
            raise RuntimeError(f"upload {i} answered {status} {body!r:.300}")

    async with asyncio.timeout(OP_TIMEOUT):
        return await bounded(n, len(clients), one)


async def drive(
    plan: Plan, server: FileshareServer, tokens: list[str], pids: dict[str, int]
) -> list[dict[str, Any]]:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=OP_TIMEOUT)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=plan.clients * 2)
    ) as http:
        sides = {
            "key": [FileshareClient(http, server.url, API_KEY)] * plan.clients,
            "jwt": [FileshareClient(http, server.url, t) for t in tokens],
        }
        for name in SIDES:
            if plan.warmup:
                await batch(sides[name], plan.warmup, plan.size)
        meter = CpuMeter(pids)
        rounds: list[dict[str, Any]] = []
        for r in range(plan.rounds):
            order = list(SIDES) if r % 2 == 0 else list(SIDES)[::-1]
            this: dict[str, Any] = {"round": r + 1, "order": order}
            for name in order:
                meter.start()
                seconds = await batch(sides[name], plan.uploads, plan.size)
                cpu = meter.stop()
                this[name] = {
                    "seconds": round(seconds, 3),
                    "per_s": round(plan.uploads / seconds, 1),
                    "cpu": cpu,
                    "fileshare_cpu_ms_per_upload": round(1000 * cpu["fileshare"] / plan.uploads, 3),
                }
            this["ratio"] = round(this["jwt"]["per_s"] / this["key"]["per_s"], 3)
            rounds.append(this)
            progress(
                f"round {r + 1}/{plan.rounds} ({'→'.join(order)}): key {this['key']['per_s']}/s, "
                f"jwt {this['jwt']['per_s']}/s, ratio {this['ratio']}; fileshare CPU ms/upload "
                f"{this['key']['fileshare_cpu_ms_per_upload']} → "
                f"{this['jwt']['fileshare_cpu_ms_per_upload']}"
            )
        return rounds


def _median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def summarize(rounds: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    if not rounds:
        return {}
    out: dict[str, Any] = {
        "ratio_median": _median([r["ratio"] for r in rounds]),
        "ratio_min": min(r["ratio"] for r in rounds),
        "ratio_max": max(r["ratio"] for r in rounds),
    }
    for side in SIDES:
        out[side] = {
            "per_s_median": _median([r[side]["per_s"] for r in rounds]),
            "cpu_ms_per_upload": {
                proc: _median([1000 * r[side]["cpu"][proc] / plan.uploads for r in rounds])
                for proc in rounds[0][side]["cpu"]
            },
        }
    out["ratio_of_medians"] = round(out["jwt"]["per_s_median"] / out["key"]["per_s_median"], 3)
    key_ms, jwt_ms = (out[s]["cpu_ms_per_upload"]["fileshare"] for s in SIDES)
    out["fileshare_cpu_ms_added_by_jwt"] = round(jwt_ms - key_ms, 3)
    out["meets_target"] = out["ratio_median"] >= TARGET
    return out


def render(results: dict[str, Any]) -> str:
    plan = results["meta"]["plan"]
    lines = [
        f"## Authentication: {plan['uploads']} uploads of {plan['size']} B, {plan['clients']} "
        f"clients, {plan['rounds']} rounds (commit {results['meta']['commit']})",
        "",
        "| validator (in process), µs/token | first use | remembered | jwt.decode alone |",
        "|---|---:|---:|---:|",
    ]
    for alg, cost in results.get("validator", {}).items():
        lines.append(
            f"| {alg} | {cost['first_us']:.1f} | {cost['remembered_us']:.1f} | "
            f"{cost['jwt_decode_us']:.1f} |"
        )
    s = results.get("summary") or {}
    if s:
        lines += [
            "",
            "| credential | uploads/s (median) | fileshare CPU ms/upload |",
            "|---|---:|---:|",
        ]
        for side, label in (("key", "API key (bootstrap)"), ("jwt", "JWT, ES256 (local JWKS)")):
            lines.append(
                f"| {label} | {s[side]['per_s_median']:.1f} | "
                f"{s[side]['cpu_ms_per_upload']['fileshare']:.2f} |"
            )
        lines += [
            "",
            f"ratio JWT/key: **{s['ratio_median']:.3f}** (median of rounds; "
            f"{s['ratio_min']:.3f}..{s['ratio_max']:.3f}), target ≥ {TARGET}: "
            f"{'met' if s['meets_target'] else 'MISSED'}; JWKS fetched "
            f"{results['meta'].get('jwks_fetches')} time(s)",
            "",
            "| round | order | key up/s | jwt up/s | ratio |",
            "|---:|---|---:|---:|---:|",
        ]
        for r in results["rounds"]:
            lines.append(
                f"| {r['round']} | {' → '.join(r['order'])} | {r['key']['per_s']:.1f} | "
                f"{r['jwt']['per_s']:.1f} | {r['ratio']:.3f} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- driver


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.auth", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--uploads", type=int, default=200, help="uploads per batch (200)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--size", type=int, default=1024, help="bytes per upload (1024)")
    parser.add_argument("--rounds", type=int, default=15, help="rounds (15)")
    parser.add_argument("--warmup", type=int, default=48, help="unrecorded uploads/side (48)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"JSON ({RESULTS})")
    args = parser.parse_args(argv)
    if min(args.uploads, args.clients, args.size, args.rounds) < 1 or args.warmup < 0:
        parser.error("--uploads, --clients, --size and --rounds must be at least 1")
    return args


def _git(*args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False, timeout=30
    )
    return out.stdout.strip()


@contextlib.contextmanager
def _timed(what: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    progress(f"{what}: {time.perf_counter() - started:.1f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(args.uploads, args.clients, args.size, args.rounds, args.warmup)
    dirty = _git("status", "--porcelain", "--", "fileshare")
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "commit": _git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else ""),
            "plan": vars(plan),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "pyjwt": jwt.__version__,
            "clamd_config": {"DisableCache": True, "MaxThreads": CLAMD_MAX_THREADS},
            "fileshare_clamd_max_scans": CLAMD_MAX_SCANS,
            "target_ratio": TARGET,
        },
        "rounds": [],
    }
    started = time.perf_counter()
    status = 0
    try:
        with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            with _timed("validator alone"):
                results["validator"] = validator_cost()
            key, jwk = es256_key()
            jwks = stack.enter_context(Jwks({"keys": [jwk]}))
            progress("starting clamd (DisableCache yes)...")
            clamd = stack.enter_context(
                Clamd(max_stream=MAX_UPLOAD, disable_cache=True, max_threads=CLAMD_MAX_THREADS)
            )
            settings = _fileshare_settings(("auth-unscanned", "auth-permanent"), clamd) | {
                "FILESHARE_STORAGE": "local",
                "FILESHARE_JWT_ISSUERS": json.dumps(
                    [{"issuer": ISSUER, "jwks_url": jwks.url, "audience": AUDIENCE}]
                ),
            }
            progress("starting fileshare...")
            server = stack.enter_context(FileshareServer("auth", settings))
            pids = {"bench": os.getpid(), "clamd": clamd.pid, "fileshare": server.pid}
            tokens = [token(key, "ES256", jwk["kid"], c) for c in range(plan.clients)]

            async def go() -> None:
                results["rounds"].extend(await drive(plan, server, tokens, pids))

            with _timed("uploads"):
                _section(go(), [clamd, server])
            results["meta"]["jwks_fetches"] = jwks.fetches
    except KeyboardInterrupt:
        progress("interrupted: servers stopped; writing what was measured")
        results["meta"]["interrupted"] = True
        status = 130
    except Exception as exc:
        progress(f"benchmark failed: {type(exc).__name__}: {exc}")
        results["meta"]["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    results["summary"] = summarize(results["rounds"], plan)
    results["meta"]["duration_s"] = round(time.perf_counter() - started, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    progress(f"results written to {args.output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
