"""Who fileshare trusts to issue bearer tokens, and where their verification keys come from.

One ``TrustedIssuer`` per issuer: an external identity provider (keys from its JWKS URL,
``auth.jwks``) or fileshare's own token endpoint (keys from the index). The JWT
authenticator (``auth.jwt``) treats them alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import jwt

from fileshare.auth.principal import Role
from fileshare.config import ASYMMETRIC_ALGORITHMS

#: Asymmetric algorithms only: a token signed with a shared secret (HS*) or with nothing
#: (``none``) is never accepted, whatever an issuer's configuration says. (Defined in
#: ``config``, which checks the settings with it without loading PyJWT.)
ASYMMETRIC = ASYMMETRIC_ALGORITHMS


class KeySource(Protocol):
    """An issuer's verification keys.

    ``key(kid)`` returns the key named ``kid`` (or the only key, when ``kid`` is None and
    there is exactly one), or None when the issuer has no such key even after one refresh.
    A source refreshes on an unknown ``kid`` at most once per its minimum interval, keeps
    serving cached keys while its origin is down, and raises ``KeysUnavailable`` only when it
    has never had keys to judge by (so a token is refused — fail closed — never accepted)."""

    async def key(self, kid: str | None) -> jwt.PyJWK | None: ...


class KeysUnavailable(Exception):
    """The issuer's keys could not be had at all (its JWKS never answered)."""


@dataclass(frozen=True)
class TrustedIssuer:
    issuer: str
    #: Accepted ``aud`` values (a token must name one).
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...]
    keys: KeySource
    #: Claim names: where the scopes, role, owner and acting client are read from.
    scope_claim: str = "scope"
    role_claim: str = "role"
    owner_claim: str | None = None
    client_claims: Sequence[str] = ("client_id", "azp")
    #: The role of a token that names none.
    default_role: Role = Role.PARTICIPANT
    #: The roles its tokens may claim (another is refused, 401).
    allowed_roles: frozenset[Role] = frozenset(Role)
    #: fileshare's own issuer: ``sub`` is a registered client, looked up on every request
    #: so that revoking it stops its tokens at once.
    registered_clients: bool = False
    #: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat``.
    leeway: float = 30.0
    #: The issuer's scope names for fileshare's (seed 003's ``private_contracts:write`` is
    #: ``links:write``), mapped before the role caps the scopes.
    scope_aliases: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = set(self.algorithms) - ASYMMETRIC
        if bad or not self.algorithms:
            raise ValueError(f"issuer {self.issuer}: algorithms must be asymmetric, not {bad}")
