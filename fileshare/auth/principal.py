"""The principal a request acts as: a subject, the client acting, its role and scopes."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from fileshare.upload_policy import NO_POLICY, UploadPolicy


class Role(enum.StrEnum):
    """Seed 000's roles. What each may reach is decided in ``auth.policy``."""

    #: Their own files only.
    PARTICIPANT = "participant"
    #: Writes and reads the files of the participants it serves (by grant), naming the
    #: owner in the request; has its own files too.
    WORKER = "worker"
    #: Reads the files of the participants it is granted; never writes.
    RESEARCHER = "researcher"
    #: Everything: clients, keys, grants, the audit trail, any owner's files.
    ADMIN = "admin"


class Scope(enum.StrEnum):
    FILES_READ = "files:read"
    FILES_WRITE = "files:write"
    FILES_DELETE = "files:delete"
    TAGS_WRITE = "tags:write"
    LINKS_WRITE = "links:write"
    AUDIT_READ = "audit:read"
    ADMIN = "admin"


ALL_SCOPES = frozenset(Scope)
#: What a role may hold at most: a token or key never carries more, whatever it asks.
ROLE_SCOPES: dict[Role, frozenset[Scope]] = {
    Role.PARTICIPANT: frozenset(
        {Scope.FILES_READ, Scope.FILES_WRITE, Scope.FILES_DELETE, Scope.TAGS_WRITE}
    ),
    Role.WORKER: frozenset(
        {
            Scope.FILES_READ,
            Scope.FILES_WRITE,
            Scope.FILES_DELETE,
            Scope.TAGS_WRITE,
            Scope.LINKS_WRITE,
        }
    ),
    Role.RESEARCHER: frozenset({Scope.FILES_READ}),
    Role.ADMIN: ALL_SCOPES,
}


def parse_scopes(value: object) -> frozenset[str]:
    """A space-separated scope string (RFC 6749 §3.3) or a list of them (as some identity
    providers send ``scp``), as a set; anything else is no scopes."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple):
        return frozenset(w for s in value if isinstance(s, str) for w in s.split())
    return frozenset()


def scope_text(scopes: frozenset[str]) -> str:
    return " ".join(sorted(scopes))


@dataclass(frozen=True)
class Principal:
    """Who a request acts as.

    ``subject`` is whom the request is attributed to (a client id, or an external token's
    ``sub``); ``client`` is the software acting (the same for a client's own keys and
    tokens; ``azp``/``client_id`` of an external token). ``owner`` is the namespace of the
    principal's own files. ``scopes`` are already capped by the role."""

    subject: str
    client: str
    role: Role
    scopes: frozenset[str]
    owner: str
    #: How it authenticated: ``api_key`` (bootstrap or registered) or ``jwt``.
    method: str
    #: The issuer of a token, for the audit trail.
    issuer: str | None = None
    #: Set for registered clients: checked again on every request so revocation is
    #: immediate.
    registered: bool = field(default=False, compare=False)
    #: A registered client's upload policy, read with it on every request.
    policy: UploadPolicy = field(default=NO_POLICY, compare=False)

    def has(self, scope: str) -> bool:
        return scope in self.scopes


def capped(role: Role, scopes: frozenset[str]) -> frozenset[str]:
    """``scopes`` without what ``role`` may never hold."""
    return scopes & ROLE_SCOPES[role]
