"""The token endpoint's throughput: tokens/s from ``POST /oauth/token``.

    .venv/bin/python -m bench.tokens [--requests 400] [--clients 16] [--rounds 3]

One ``fileshare serve`` process (local storage, the SQLite index) and, in the same index
(written from here before the runs), registered clients. Each round runs every scenario in
turn, ``--requests`` token requests from ``--clients`` concurrent clients:

- ``bootstrap``: ``client_secret_basic`` with a ``FILESHARE_API_KEYS`` principal's key
  (a SHA-256 comparison, no argon2): what the endpoint itself costs (parse, sign, audit row);
- ``secret, remembered``: one registered client, its secret checked by argon2 once and then
  remembered (``auth.secrets.Verified``): the usual case of a service asking every few
  minutes;
- ``secret, argon2 each``: a different registered client per request (one secret hash
  shared by all), so every request pays one argon2id verification (``--argon2-requests``
  of them: they are slow);
- ``private_key_jwt``: one registered client, a fresh ES256 assertion per request (signed
  here, outside the timing of the server's CPU): verify it and record its ``jti``.

Before that, in this process: one argon2id verification and one ES256 token signature, in
ms, so that the share of argon2 in a request is plain. Prints a markdown table and writes
JSON to ``bench/results/tokens.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/tokens.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from bench.clients import bounded
from bench.procs import REPO, CpuMeter, FileshareServer
from bench.run import API_KEY, API_PRINCIPAL, _sigterm_as_interrupt, progress
from fileshare.auth.principal import Role, Scope
from fileshare.auth.secrets import _verify, hash_secret
from fileshare.config import Settings
from fileshare.index.factory import open_index
from fileshare.index.identity import Client, IdentityStore
from tests.servers import Clamd

RESULTS = REPO / "bench" / "results" / "tokens.json"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SECRET = "bench-client-secret-0123456789abcdef"  # noqa: S105 (a benchmark client's)
SCOPES = frozenset({Scope.FILES_READ, Scope.FILES_WRITE})
ARGON2_EACH = "secret, argon2 each"
SCENARIOS = ("bootstrap", "secret, remembered", ARGON2_EACH, "private_key_jwt")


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def in_process() -> dict[str, float]:
    """ms for one argon2id verification and one ES256 token, here, without a server."""
    stored = hash_secret(SECRET)
    started = time.perf_counter()
    for _ in range(10):
        assert _verify(stored, SECRET)
    argon2_ms = (time.perf_counter() - started) * 100
    key = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": "x", "sub": "y", "aud": "z", "exp": 2_000_000_000, "scope": "a b"}
    started = time.perf_counter()
    for _ in range(1000):
        jwt.encode(claims, key, algorithm="ES256", headers={"kid": "k"})
    sign_ms = time.perf_counter() - started
    return {"argon2id_verify_ms": round(argon2_ms, 2), "es256_sign_ms": round(sign_ms, 3)}


async def register(data_dir: Path, requests: int, jwk: dict[str, Any]) -> None:
    """The clients, written into the server's own index (SQLite: another process may)."""
    settings = Settings(api_keys={API_PRINCIPAL: API_KEY}, data_dir=data_dir)
    stored = hash_secret(SECRET)  # one hash for every client: the setup stays quick
    now = datetime.now(UTC)

    def client(cid: str, **extra: Any) -> Client:
        return Client(id=cid, role=Role.WORKER, scopes=SCOPES, owner=cid, created=now, **extra)

    async with open_index(settings) as index:
        identity = IdentityStore(index)
        await identity.create_client(client("remembered", secret_hash=stored), None)
        await identity.create_client(client("signer", jwks={"keys": [jwk]}), None)
        for n in range(requests):
            await identity.create_client(client(f"once-{n}", secret_hash=stored), None)


Request = Callable[[int], tuple[dict[str, str], dict[str, str]]]


def scenarios(
    round_no: int, requests: int, key: ec.EllipticCurvePrivateKey, token_url: str
) -> dict[str, Request]:
    form = {"grant_type": "client_credentials"}
    once = round_no * requests  # each round uses clients no earlier round has

    def assertion(i: int) -> tuple[dict[str, str], dict[str, str]]:
        now = int(time.time())
        signed = jwt.encode(
            {
                "iss": "signer",
                "sub": "signer",
                "aud": token_url,
                "iat": now,
                "exp": now + 60,
                "jti": uuid.uuid4().hex,
            },
            key,
            algorithm="ES256",
            headers={"kid": "bench-client"},
        )
        return {}, form | {"client_assertion_type": JWT_BEARER, "client_assertion": signed}

    return {
        "bootstrap": lambda i: ({"Authorization": basic(API_PRINCIPAL, API_KEY)}, form),
        "secret, remembered": lambda i: ({"Authorization": basic("remembered", SECRET)}, form),
        "secret, argon2 each": lambda i: (
            {"Authorization": basic(f"once-{once + i}", SECRET)},
            form,
        ),
        "private_key_jwt": assertion,
    }


async def run_all(
    url: str, plan: dict[str, int], pids: dict[str, int], key: Any
) -> list[dict[str, Any]]:
    requests, clients, rounds = plan["requests"], plan["clients"], plan["rounds"]
    token_url = f"{url}/oauth/token"
    out: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        timeout=timeout, connector=aiohttp.TCPConnector(limit=clients * 2)
    ) as http:
        meter = CpuMeter(pids)
        for r in range(rounds):
            this: dict[str, Any] = {"round": r + 1}
            for name, make in scenarios(r, plan["argon2_requests"], key, token_url).items():
                # argon2 at every request is slow: fewer of them, or a round takes minutes.
                n = plan["argon2_requests"] if name == ARGON2_EACH else requests
                # Assertions are signed before the clock starts: the client's work, not ours.
                prepared = [make(i) for i in range(n)]

                async def one(i: int, prepared: list[Any] = prepared, name: str = name) -> None:
                    headers, form = prepared[i]
                    async with http.post(token_url, data=form, headers=headers) as resp:
                        body = await resp.json()
                        if resp.status != 200:
                            raise RuntimeError(f"{name}: {resp.status} {body}")

                meter.start()
                seconds = await bounded(n, clients, one)
                cpu = meter.stop()
                this[name] = {
                    "requests": n,
                    "per_s": round(n / seconds, 1),
                    "fileshare_cpu_ms": round(1000 * cpu["fileshare"] / n, 2),
                }
                progress(f"round {r + 1}: {name}: {this[name]}")
            out.append(this)
    return out


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        name: {
            "per_s_median": round(statistics.median(r[name]["per_s"] for r in rounds), 1),
            "fileshare_cpu_ms_median": round(
                statistics.median(r[name]["fileshare_cpu_ms"] for r in rounds), 2
            ),
        }
        for name in SCENARIOS
        if rounds and name in rounds[0]
    }


def render(results: dict[str, Any]) -> str:
    plan = results["meta"]["plan"]
    local = results.get("in_process", {})
    lines = [
        f"## Token endpoint: {plan['requests']} requests ({plan['argon2_requests']} with "
        f"argon2 each) x {plan['rounds']} rounds, {plan['clients']} clients",
        "",
        f"In process: argon2id verify {local.get('argon2id_verify_ms')} ms, ES256 sign "
        f"{local.get('es256_sign_ms')} ms.",
        "",
        "| client authentication | tokens/s (median) | fileshare CPU ms/token |",
        "|---|---:|---:|",
    ]
    for name, s in results.get("summary", {}).items():
        lines.append(f"| {name} | {s['per_s_median']:.1f} | {s['fileshare_cpu_ms_median']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tokens")
    parser.add_argument("--requests", type=int, default=400, help="per scenario and round")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--argon2-requests", type=int, default=48, help="of the argon2-each scenario (48)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "plan": {
                "requests": args.requests,
                "clients": args.clients,
                "rounds": args.rounds,
                "argon2_requests": args.argon2_requests,
            },
            "cpus": os.cpu_count(),
        },
        "rounds": [],
    }
    status = 0
    try:
        with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
            results["in_process"] = in_process()
            progress(f"in process: {results['in_process']}")
            key = ec.generate_private_key(ec.SECP256R1())
            jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {
                "kid": "bench-client",
                "alg": "ES256",
                "use": "sig",
            }
            clamd = stack.enter_context(Clamd(max_stream=1024 * 1024))
            server = stack.enter_context(
                FileshareServer(
                    "tokens",
                    {
                        "FILESHARE_STORAGE": "local",
                        "FILESHARE_CLAMD": clamd.address,
                        "FILESHARE_API_KEYS": f"{API_PRINCIPAL}:{API_KEY}",
                    },
                )
            )
            assert server.workdir is not None
            once = args.argon2_requests * args.rounds
            progress(f"registering {once + 2} clients...")
            asyncio.run(register(server.workdir / "data", once, jwk))
            pids = {"bench": os.getpid(), "fileshare": server.pid}
            results["rounds"] = asyncio.run(run_all(server.url, results["meta"]["plan"], pids, key))
    except KeyboardInterrupt:
        progress("interrupted: servers stopped; writing what was measured")
        status = 130
    results["summary"] = summarize(results["rounds"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    progress(f"results written to {args.output}")
    return status


if __name__ == "__main__":
    sys.exit(main())
