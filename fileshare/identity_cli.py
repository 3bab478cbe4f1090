"""``fileshare clients|keys|grants``: registering clients, API keys and grants from the
command line, on the index of the server's settings (``FILESHARE_*``), without a running
server. What the admin API does, through the same registry, audited as the operating
system user who ran it."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import re
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from fileshare import errors
from fileshare.auth.principal import ROLE_SCOPES, Principal, Role, scope_text

if TYPE_CHECKING:
    from fileshare.audit import Actor

# The index, registry and settings are imported when a command runs: ``__main__`` builds
# every command's parser, and ``fileshare upload`` must not load the server to do so.

COMMANDS = ("clients", "keys", "grants")
_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def add_commands(sub: Any) -> None:
    clients = sub.add_parser("clients", help="register, list and revoke clients")
    c = clients.add_subparsers(dest="action", required=True)
    add = c.add_parser("add", help="register a client")
    add.add_argument("id")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--scopes", help="space-separated (default: all of the role's)")
    add.add_argument("--owner", help="the namespace of its own files (default: the id)")
    add.add_argument("--secret", action="store_true", help="generate a client secret")
    add.add_argument("--jwks", help="a file with its public JWK Set (private_key_jwt)")
    _policy_arguments(add)
    c.add_parser("list", help="list clients")
    policy = c.add_parser("policy", help="change what a client's uploads are held to")
    policy.add_argument("id")
    _policy_arguments(policy)
    revoke = c.add_parser("revoke", help="revoke a client and its keys")
    revoke.add_argument("id")

    keys = sub.add_parser("keys", help="make, list and revoke API keys")
    k = keys.add_subparsers(dest="action", required=True)
    kadd = k.add_parser("add", help="make an API key for a client (printed once)")
    kadd.add_argument("client")
    kadd.add_argument("--expires", help="lifetime: 90d, 12h, 30m, 60s (default: none)")
    klist = k.add_parser("list", help="a client's keys")
    klist.add_argument("client")
    krevoke = k.add_parser("revoke", help="revoke an API key")
    krevoke.add_argument("key_id")

    grants = sub.add_parser("grants", help="let clients act for owners")
    g = grants.add_subparsers(dest="action", required=True)
    gadd = g.add_parser("add", help="grant GRANTEE access to OWNER's files")
    gadd.add_argument("grantee")
    gadd.add_argument("owner")
    gadd.add_argument("--access", choices=["read", "write"], default="read")
    glist = g.add_parser("list", help="list grants")
    glist.add_argument("--grantee")
    glist.add_argument("--owner")
    gremove = g.add_parser("remove", help="take a grant back")
    gremove.add_argument("grantee")
    gremove.add_argument("owner")


def _policy_arguments(parser: Any) -> None:
    parser.add_argument(
        "--allowed-types",
        help="comma-separated media types or type/* it may upload ('': the deployment's)",
    )
    parser.add_argument(
        "--unscannable",
        choices=["reject", "quarantine", "default"],
        help="what its unscannable uploads become (default: the deployment's choice)",
    )


def _types(value: str) -> list[str]:
    return [t for t in (v.strip() for v in value.split(",")) if t]


def _lifetime(value: str | None) -> timedelta | None:
    if value is None:
        return None
    m = _DURATION.fullmatch(value.strip())
    if m is None:
        raise errors.ValidationFailed("--expires takes a number and s, m, h or d (e.g. 90d)")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def _operator() -> Actor:
    """The audit trail names who ran the command: the operating system's user."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    from fileshare.audit import Actor

    name = f"cli:{user}"
    principal = Principal(name, "fileshare-cli", Role.ADMIN, ROLE_SCOPES[Role.ADMIN], name, "cli")
    return Actor(principal, None, source="local")


async def _run(args: argparse.Namespace) -> int:
    from fileshare.auth.registry import Registry
    from fileshare.config import load_settings
    from fileshare.index.factory import open_index
    from fileshare.index.identity import IdentityStore
    from fileshare.logging import configure_logging

    settings = load_settings()
    # stdout is the command's answer; the audit events it logs are in the index already.
    configure_logging(settings.log_format, "WARNING")
    async with open_index(settings) as index:
        registry = Registry(
            IdentityStore(index),
            frozenset(settings.api_keys),
            can_quarantine=settings.quarantine_bucket is not None,
        )
        actor = _operator()
        out: Any
        if args.command == "clients":
            if args.action == "add":
                made = await registry.create_client(
                    actor,
                    args.id,
                    role=args.role,
                    scopes=args.scopes,
                    owner=args.owner,
                    with_secret=args.secret,
                    jwks=args.jwks_value,
                    allowed_types=_types(args.allowed_types or ""),
                    unscannable=None if args.unscannable == "default" else args.unscannable,
                )
                out = _client(made.client)
                if made.secret:
                    out["clientSecret"] = made.secret
            elif args.action == "list":
                out = [_client(c) for c in await registry.clients()]
            elif args.action == "policy":
                changes: dict[str, Any] = {}
                if args.allowed_types is not None:
                    changes["allowed_types"] = _types(args.allowed_types)
                if args.unscannable is not None:
                    changes["unscannable"] = (
                        None if args.unscannable == "default" else args.unscannable
                    )
                out = _client(await registry.update_policy(actor, args.id, **changes))
            else:
                await registry.revoke_client(actor, args.id)
                out = {"revoked": args.id}
        elif args.command == "keys":
            if args.action == "add":
                key = await registry.create_key(
                    actor, args.client, lifetime=_lifetime(args.expires)
                )
                out = {"id": key.key.id, "client": args.client, "key": key.presented}
                if key.key.expires:
                    out["expires"] = key.key.expires.isoformat()
            elif args.action == "list":
                out = [
                    {
                        "id": k.id,
                        "created": k.created.isoformat(),
                        "expires": k.expires.isoformat() if k.expires else None,
                        "active": k.revoked is None,
                    }
                    for k in await registry.keys(args.client)
                ]
            else:
                await registry.revoke_key(actor, args.key_id)
                out = {"revoked": args.key_id}
        elif args.action == "add":
            g = await registry.put_grant(actor, args.grantee, args.owner, args.access)
            out = {"grantee": g.grantee, "owner": g.owner, "access": g.access}
        elif args.action == "list":
            out = [
                {"grantee": g.grantee, "owner": g.owner, "access": g.access}
                for g in await registry.grants(grantee=args.grantee, owner=args.owner)
            ]
        else:
            await registry.delete_grant(actor, args.grantee, args.owner)
            out = {"removed": {"grantee": args.grantee, "owner": args.owner}}
    print(json.dumps(out, indent=2))
    return 0


def _client(c: Any) -> dict[str, Any]:
    return {
        "id": c.id,
        "role": c.role.value,
        "scopes": scope_text(c.scopes),
        "owner": c.owner,
        "active": c.active,
        "allowedTypes": sorted(c.policy.allowed_types),
        "unscannable": c.policy.unscannable.value if c.policy.unscannable else None,
    }


def run(args: argparse.Namespace) -> int:
    """0 done; 1 refused (not found, exists already, invalid); 2 configuration or index
    unreachable."""
    from fileshare.config import ConfigError

    try:
        args.jwks_value = None
        if getattr(args, "jwks", None):
            with open(args.jwks, encoding="utf-8") as f:
                args.jwks_value = json.load(f)
        return asyncio.run(_run(args))
    except ConfigError as exc:
        print(f"fileshare: configuration error: {exc}", file=sys.stderr)
        return 2
    except errors.IndexUnavailable:
        print("fileshare: the index cannot be reached", file=sys.stderr)
        return 2
    except errors.FileshareError as exc:
        print(f"fileshare: {args.command} {args.action}: {exc.detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fileshare: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"fileshare: --jwks is not JSON: {exc}", file=sys.stderr)
        return 2
