"""Settings: parsed once from ``FILESHARE_*`` variables (and an optional file), validated
at start-up, frozen afterwards.

A setting file (``FILESHARE_CONFIG=config/fileshare.env``) holds ``KEY=value`` lines;
the environment wins over the file so a deployment can override one value.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlencode, urlsplit

from fileshare.auth.principal import Role
from fileshare.sniff import MEDIA_PATTERN, TypeCheck, media_type
from fileshare.storage.encryption import Encryption, EncryptionMode, default_mode
from fileshare.transport import (
    Plaintext,
    http_endpoint_problem,
    is_loopback,
    plaintext_allowed,
    plaintext_host_entry,
    plaintext_uses,
    postgres_authority_host,
    postgres_problem,
)
from fileshare.upload_policy import Unscannable

MiB = 1024 * 1024
GiB = 1024 * MiB

#: clamd cannot scan a stream of 2 GiB or more, and FHIR R4 ``Attachment.size`` is a
#: 32-bit signed int: the hard ceiling for any upload.
MAX_SCANNABLE = 2 * GiB - 1
#: S3 refuses multipart parts under 5 MiB (but the last).
MIN_PART_SIZE = 5 * MiB
#: GCS resumable uploads take chunks in multiples of 256 KiB.
GCS_CHUNK_QUANTUM = 256 * 1024

StorageKind = Literal["local", "s3", "gcs"]
LogFormat = Literal["json", "console"]
PromotionKind = Literal["copy", "single-write"]


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names it."""


@dataclass(frozen=True)
class ClamdAddress:
    """Either a TCP endpoint or a unix socket path."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    @classmethod
    def parse(cls, value: str) -> ClamdAddress:
        if value.startswith("tcp://"):
            parts = urlsplit(value)
            if not parts.hostname or not parts.port:
                raise ConfigError(f"FILESHARE_CLAMD: {value!r} needs tcp://host:port")
            return cls(host=parts.hostname, port=parts.port)
        if value.startswith("unix://"):
            value = value[len("unix://") :]
        if not value.startswith("/"):
            raise ConfigError(
                f"FILESHARE_CLAMD: {value!r} is neither tcp://host:port nor an absolute socket path"
            )
        return cls(path=value)

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.port}" if self.path is None else f"unix://{self.path}"


#: Signature algorithms a token may use: asymmetric only. A token signed with a shared
#: secret (HS*) or unsigned (``none``) is never accepted, whatever a setting says.
#: (``auth.trust`` enforces it on every issuer; it lives here so that settings are checked
#: without loading PyJWT.)
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def jwks_url_problem(url: str, allow_http: bool) -> str | None:
    """What makes ``url`` unfit to fetch verification keys from, or None: keys fetched
    over plain http can be swapped by anybody on the path, so https is required except on
    loopback (a sidecar, the tests) or when ``FILESHARE_JWKS_ALLOW_HTTP`` says so."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "must be an absolute https URL"
    if parts.username or parts.password:
        return "must not hold credentials"
    if parts.scheme == "http" and not (allow_http or is_loopback(parts.hostname)):
        return (
            "must be https (plain http only on loopback, for a host in "
            "FILESHARE_PLAINTEXT_HOSTS, or with FILESHARE_JWKS_ALLOW_HTTP)"
        )
    return None


@dataclass(frozen=True)
class JwtIssuer:
    """An identity provider whose bearer tokens fileshare accepts (``FILESHARE_JWT_ISSUERS``):
    tokens must name ``issuer`` as ``iss`` and one of ``audiences`` as ``aud``, be signed
    with one of ``algorithms`` by a key from ``jwks_url``."""

    issuer: str
    jwks_url: str
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    #: Where the scopes (a space-separated string or a list), the role and the owner
    #: namespace are read from; without an owner claim a token's files are its ``sub``'s.
    scope_claim: str = "scope"
    role_claim: str = "role"
    owner_claim: str | None = None
    #: The role of a token that names none.
    default_role: Role = Role.PARTICIPANT
    #: The roles its tokens may claim: admin only when listed (an identity provider's
    #: admins are not fileshare's unless a deployment says so).
    allowed_roles: frozenset[Role] = frozenset({Role.PARTICIPANT, Role.WORKER, Role.RESEARCHER})

    def problem(self, allow_http: bool) -> str | None:
        if not self.issuer:
            return "issuer must not be empty"
        if (url := jwks_url_problem(self.jwks_url, allow_http)) is not None:
            return f"jwks_url {url}"
        if not self.audiences or not all(self.audiences):
            return "audience must name at least one audience"
        if not self.algorithms:
            return "algorithms must name at least one algorithm"
        if bad := sorted(set(self.algorithms) - ASYMMETRIC_ALGORITHMS):
            return (
                f"algorithms {', '.join(bad)} are not accepted: only "
                f"{', '.join(sorted(ASYMMETRIC_ALGORITHMS))}"
            )
        if not self.scope_claim or not self.role_claim or self.owner_claim == "":
            return "claim names must not be empty"
        return None


@dataclass(frozen=True)
class Settings:
    # storage
    storage: StorageKind = "local"
    data_dir: Path = Path("data")
    #: The SQLite index file; defaults to ``<data_dir>/index.sqlite3``.
    index_path: Path | None = None
    #: The PostgreSQL index (``postgresql://user:password@host/db``); the SQLite file when
    #: unset. Carries a password: kept out of ``repr`` and of every message.
    index_url: str | None = field(default=None, repr=False)
    unscanned_bucket: str = "unscanned"
    permanent_bucket: str = "permanent"
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)
    gcs_endpoint: str | None = None
    gcs_project: str | None = None
    #: A service-account JSON key that signs GCS URLs (direct uploads, download redirects);
    #: None: Application Default Credentials, where they can sign (never on an emulator).
    gcs_signing_credentials: Path | None = None
    #: Encryption at rest asked for on every write (``storage.encryption``); None: the
    #: backend's default (sse-s3 on S3, the store's own default elsewhere).
    storage_encryption: EncryptionMode | None = None
    storage_kms_key: str | None = None
    s3_bucket_key: bool = True
    part_size: int = 8 * MiB
    parts_in_flight: int = 2
    #: How a clean upload reaches the permanent bucket. ``copy``: streamed into the
    #: unscanned bucket, then copied server-side (the design card's flow, auditable);
    #: ``single-write``: streamed into an upload the store keeps invisible under the
    #: permanent key, completed on a clean verdict (every byte written once).
    promotion: PromotionKind = "copy"
    #: Content-Type checks on the first bytes (``sniff``): enforce (refuse), report, off.
    type_check: TypeCheck = "enforce"
    #: Declared media types accepted (``type/subtype`` or ``type/*``); empty: every type.
    allowed_types: frozenset[str] = frozenset()
    storage_timeout: float = 60.0
    #: How often objects whose deletion failed are removed again (seconds).
    sweep_interval: float = 300.0
    #: Seconds between two rescan rounds (0: no periodic rescans).
    rescan_interval: float = 600.0
    #: A clean verdict older than this many seconds is rescanned whatever the database.
    rescan_after: float = 30 * 86400.0
    #: A download of content whose verdict is older than this many seconds rescans it
    #: first (0: never).
    rescan_on_download: float = 0.0
    #: Staging objects and unfinished uploads older than this (seconds) are leftovers of
    #: crashed uploads, removed by the sweeper (``recovery``).
    staging_max_age: float = 86400.0
    # direct-to-bucket uploads and downloads (S3)
    #: How long a presigned upload URL works (seconds).
    direct_url_ttl: int = 900
    #: The largest direct upload in one presigned PUT; a larger one gets a multipart plan.
    direct_put_max: int = 5 * GiB
    #: The part size of a multipart plan (raised for uploads that would need more than
    #: 10,000 parts).
    direct_part_size: int = 64 * MiB
    #: How often staged direct uploads nobody completed are ingested, and those whose
    #: URL expired unused are expired (seconds).
    reconcile_interval: float = 60.0
    #: Answer downloads with a 302 to a presigned GET of the permanent object, unless the
    #: caller asks otherwise (``?redirect=false``).
    download_redirect: bool = False
    #: How long such a presigned GET works (seconds).
    redirect_ttl: int = 300
    #: The bucket of partner links (seed 003: ``POST /v1/links``); unset: no links.
    links_bucket: str | None = None
    #: Where infected and unscannable uploads are kept as evidence (``quarantine/<id>``),
    #: for the admin API to examine, release or delete; unset: they are thrown away.
    quarantine_bucket: str | None = None
    #: What unscannable uploads become (a client's policy may say otherwise): reject (their
    #: bytes are thrown away) or quarantine (kept there, as infected ones are); unset:
    #: quarantine when there is a quarantine bucket, else reject.
    unscannable: Unscannable | None = None
    #: The scope external tokens carry for partner links (taken as ``links:write``).
    links_scope: str = "private_contracts:write"
    #: Storage events, a trigger of direct uploads' ingestion: an SQS queue of S3 event
    #: notifications (its endpoint for a stand-in; the S3 credentials and region are used),
    #: and the bearer token SeaweedFS's filer webhook presents at
    #: ``POST /v1/events/seaweedfs`` (unset: that route is off). A secret: never in repr.
    sqs_queue_url: str | None = None
    sqs_endpoint: str | None = None
    events_token: str | None = field(default=None, repr=False)
    # webhooks (``webhooks``)
    #: Attempts at a message before it is given up as dead.
    webhook_attempts: int = 8
    #: Seconds before the second attempt; each later wait is 6 times the one before
    #: (at most 10 hours): 5 s, 30 s, 3 min, 18 min, 1.8 h, 10 h, 10 h by default.
    webhook_backoff: float = 5.0
    #: Seconds one attempt may take, connection included.
    webhook_timeout: float = 10.0
    #: Hosts, addresses and networks (CIDR) callbacks may reach although they are not
    #: public (a receiver in the cluster); anything else private is refused (SSRF).
    webhook_private_hosts: frozenset[str] = frozenset()
    # scanner
    clamd: ClamdAddress = field(default_factory=lambda: ClamdAddress(host="127.0.0.1", port=3310))
    clamd_connect_timeout: float = 5.0
    clamd_idle_timeout: float = 30.0
    clamd_verdict_timeout: float = 120.0
    clamd_max_scans: int = 8
    #: How long ``serve`` waits at start-up for clamd to answer PING (a sidecar may still be
    #: loading its database) before giving up with exit code 2; 0: do not wait or check.
    clamd_start_timeout: float = 120.0
    # limits
    max_upload_size: int = 512 * MiB
    memory_budget: int = 512 * MiB
    budget_wait: float = 10.0
    # http
    host: str = "127.0.0.1"
    port: int = 8080
    public_base_url: str = "http://127.0.0.1:8080"
    shutdown_grace: float = 30.0
    #: HTTP parser limits: the request line, one header line, the number of headers.
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 100
    # auth: principal -> API key
    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Bootstrap principals (of ``api_keys``) with the admin role; the others are
    #: participants of their own files, as in the first releases.
    admins: frozenset[str] = frozenset()
    #: Identity providers whose bearer tokens (JWT) are accepted.
    jwt_issuers: tuple[JwtIssuer, ...] = ()
    #: Development only: fetch JWKS over plain http from hosts other than loopback.
    jwks_allow_http: bool = False
    #: Hosts besides loopback that may be reached without TLS (``transport``); ``*``: any.
    plaintext_hosts: frozenset[str] = frozenset()
    #: ``Strict-Transport-Security: max-age`` sent when the public base URL is https
    #: (0: not sent).
    hsts_max_age: int = 365 * 86400
    #: fileshare's own token endpoint (``/oauth/token``): the seconds its tokens live, the
    #: ``aud`` they carry (None: the public base URL), the seconds a signing key signs.
    token_lifetime: float = 600.0
    token_audience: str | None = None
    signing_key_rotation: float = 30 * 86400.0
    # logging
    log_format: LogFormat = "json"
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.storage not in ("local", "s3", "gcs"):
            raise ConfigError(f"FILESHARE_STORAGE must be local, s3 or gcs, not {self.storage!r}")
        if self.promotion not in ("copy", "single-write"):
            raise ConfigError(
                f"FILESHARE_PROMOTION must be copy or single-write, not {self.promotion!r}"
            )
        if self.type_check not in ("enforce", "report", "off"):
            raise ConfigError(
                f"FILESHARE_TYPE_CHECK must be enforce, report or off, not {self.type_check!r}"
            )
        for pattern in self.allowed_types:
            if not MEDIA_PATTERN.fullmatch(pattern):
                raise ConfigError(
                    f"FILESHARE_ALLOWED_TYPES: {pattern[:60]!r} is not type/subtype or type/*"
                )
        if self.unscanned_bucket == self.permanent_bucket:
            raise ConfigError("the unscanned and permanent buckets must differ")
        buckets = [
            ("FILESHARE_UNSCANNED_BUCKET", self.unscanned_bucket),
            ("FILESHARE_PERMANENT_BUCKET", self.permanent_bucket),
        ]
        if self.quarantine_bucket is not None:
            if self.quarantine_bucket in (self.unscanned_bucket, self.permanent_bucket):
                raise ConfigError(
                    "FILESHARE_QUARANTINE_BUCKET must differ from the unscanned and permanent "
                    "buckets"
                )
            if self.promotion == "single-write":
                # Single-write streams a big body into an invisible upload under the
                # permanent key: no staged object is left to quarantine from.
                raise ConfigError(
                    "FILESHARE_QUARANTINE_BUCKET needs FILESHARE_PROMOTION=copy, not single-write"
                )
            buckets.append(("FILESHARE_QUARANTINE_BUCKET", self.quarantine_bucket))
        elif self.unscannable is Unscannable.QUARANTINE:
            raise ConfigError("FILESHARE_UNSCANNABLE=quarantine needs FILESHARE_QUARANTINE_BUCKET")
        for variable, name in buckets:
            problem = bucket_name_problem(name, self.storage)
            if problem is not None:
                raise ConfigError(f"{variable}: {name[:80]!r} {problem}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"FILESHARE_PORT must be from 1 to 65535, not {self.port}")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ConfigError(
                f"FILESHARE_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, "
                f"not {self.log_level[:40]!r}"
            )
        for variable, seconds, zero_allowed in (
            ("FILESHARE_STORAGE_TIMEOUT", self.storage_timeout, False),
            ("FILESHARE_CLAMD_CONNECT_TIMEOUT", self.clamd_connect_timeout, False),
            ("FILESHARE_CLAMD_IDLE_TIMEOUT", self.clamd_idle_timeout, False),
            ("FILESHARE_CLAMD_VERDICT_TIMEOUT", self.clamd_verdict_timeout, False),
            ("FILESHARE_CLAMD_START_TIMEOUT", self.clamd_start_timeout, True),
            ("FILESHARE_BUDGET_WAIT", self.budget_wait, True),
            ("FILESHARE_SHUTDOWN_GRACE", self.shutdown_grace, True),
        ):
            # "not >= 0" also refuses NaN
            if not (seconds >= 0 if zero_allowed else seconds > 0) or seconds == float("inf"):
                rule = "zero or more" if zero_allowed else "more than zero"
                raise ConfigError(f"{variable} must be a number of seconds, {rule}")
        if not 0 < self.max_upload_size <= MAX_SCANNABLE:
            raise ConfigError(
                f"FILESHARE_MAX_UPLOAD_SIZE must be between 1 and {MAX_SCANNABLE} bytes "
                "(clamd cannot scan 2 GiB or more; FHIR Attachment.size is a 32-bit int)"
            )
        if self.part_size < MIN_PART_SIZE:
            raise ConfigError(f"FILESHARE_PART_SIZE must be at least {MIN_PART_SIZE} (S3 minimum)")
        if self.part_size % GCS_CHUNK_QUANTUM:
            raise ConfigError("FILESHARE_PART_SIZE must be a multiple of 256 KiB (GCS chunk size)")
        if self.parts_in_flight < 1:
            raise ConfigError("FILESHARE_PARTS_IN_FLIGHT must be at least 1")
        if self.memory_budget < self.per_upload_memory:
            raise ConfigError(
                f"FILESHARE_MEMORY_BUDGET ({self.memory_budget}) is below what one upload "
                f"needs ({self.per_upload_memory} = part size x "
                "(max(parts in flight, 2) + 1) + 1 MiB)"
            )
        if not 1 <= self.staging_max_age < float("inf"):
            raise ConfigError("FILESHARE_STAGING_MAX_AGE must be at least 1 second")
        if not 1 <= self.direct_url_ttl <= 7 * 86400:
            raise ConfigError("FILESHARE_DIRECT_URL_TTL must be between 1 s and 7 days")
        if not 1 <= self.redirect_ttl <= 7 * 86400:
            raise ConfigError("FILESHARE_REDIRECT_TTL must be between 1 s and 7 days")
        if not 0 < self.direct_put_max <= 5 * GiB:
            raise ConfigError("FILESHARE_DIRECT_PUT_MAX must be between 1 byte and 5 GiB")
        if not 5 * MiB <= self.direct_part_size <= 5 * GiB:
            raise ConfigError("FILESHARE_DIRECT_PART_SIZE must be between 5MiB and 5GiB")
        if not self.reconcile_interval > 0:
            raise ConfigError("FILESHARE_RECONCILE_INTERVAL must be a positive number of seconds")
        if self.rescan_interval < 0 or not self.rescan_after > 0:
            raise ConfigError(
                "FILESHARE_RESCAN_INTERVAL must be >= 0 and FILESHARE_RESCAN_AFTER > 0"
            )
        if not 0 <= self.rescan_on_download < float("inf"):
            raise ConfigError("FILESHARE_RESCAN_ON_DOWNLOAD must be >= 0 seconds (0: never)")
        if not 1 <= self.webhook_attempts <= 100:
            raise ConfigError("FILESHARE_WEBHOOK_ATTEMPTS must be from 1 to 100")
        for variable, seconds in (
            ("FILESHARE_WEBHOOK_BACKOFF", self.webhook_backoff),
            ("FILESHARE_WEBHOOK_TIMEOUT", self.webhook_timeout),
        ):
            if not 0 < seconds < float("inf"):
                raise ConfigError(f"{variable} must be a number of seconds, more than zero")
        if not self.sweep_interval > 0:
            raise ConfigError("FILESHARE_SWEEP_INTERVAL must be a positive number of seconds")
        if self.clamd_max_scans < 1:
            raise ConfigError("FILESHARE_CLAMD_MAX_SCANS must be at least 1")
        parts = urlsplit(self.public_base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("FILESHARE_PUBLIC_BASE_URL must be an absolute http(s) URL")
        if (problem := self.encryption.problem(self.storage)) is not None:
            raise ConfigError(f"FILESHARE_STORAGE_ENCRYPTION ({self.encryption.mode}): {problem}")
        signing_key = self.gcs_signing_credentials
        if self.storage == "gcs" and signing_key is not None and not signing_key.is_file():
            raise ConfigError(
                f"FILESHARE_GCS_SIGNING_CREDENTIALS: {str(signing_key)[:120]!r} is not a file "
                "(a service-account JSON key)"
            )
        if self.events_token is not None and len(self.events_token) < 16:
            raise ConfigError("FILESHARE_EVENTS_TOKEN must be at least 16 characters")
        for variable, endpoint, used in (
            ("FILESHARE_S3_ENDPOINT", self.s3_endpoint, self.storage == "s3"),
            ("FILESHARE_GCS_ENDPOINT", self.gcs_endpoint, self.storage == "gcs"),
            ("FILESHARE_SQS_ENDPOINT", self.sqs_endpoint, self.sqs_queue_url is not None),
        ):
            if used and endpoint and (problem := self.endpoint_problem(endpoint)) is not None:
                raise ConfigError(f"{variable} {problem}")
        if self.clamd.host is not None and not plaintext_allowed(
            self.clamd.host, self.plaintext_hosts
        ):
            raise ConfigError(
                f"FILESHARE_CLAMD: clamd has no TLS, and {self.clamd.host[:80]} is not loopback: "
                "run it beside fileshare (tcp://127.0.0.1 or a unix socket), or list the host "
                "in FILESHARE_PLAINTEXT_HOSTS"
            )
        for variable, value, least in (
            ("FILESHARE_MAX_LINE_SIZE", self.max_line_size, 1024),
            ("FILESHARE_MAX_FIELD_SIZE", self.max_field_size, 1024),
            ("FILESHARE_MAX_HEADERS", self.max_headers, 16),
        ):
            if not least <= value <= 1024 * 1024:
                raise ConfigError(f"{variable} must be from {least} to 1048576")
        if self.hsts_max_age < 0:
            raise ConfigError("FILESHARE_HSTS_MAX_AGE must be zero or more seconds")
        if self.storage == "s3" and (self.s3_access_key is None) != (self.s3_secret_key is None):
            raise ConfigError(
                "set both FILESHARE_S3_ACCESS_KEY and FILESHARE_S3_SECRET_KEY, or neither"
            )
        if not self.api_keys and not self.jwt_issuers:
            raise ConfigError(
                "FILESHARE_API_KEYS must name at least one principal:key pair "
                "(or FILESHARE_JWT_ISSUERS at least one token issuer)"
            )
        seen: set[str] = set()
        for n, issuer in enumerate(self.jwt_issuers):
            problem = issuer.problem(self.jwks_plain_http(issuer.jwks_url))
            if problem is None and issuer.issuer in seen:
                problem = "is listed twice"
            if problem is None and issuer.issuer.rstrip("/") == self.base_url:
                problem = "is fileshare's own token issuer (FILESHARE_PUBLIC_BASE_URL)"
            if problem is not None:
                raise ConfigError(f"FILESHARE_JWT_ISSUERS[{n}] ({issuer.issuer[:80]!r}): {problem}")
            seen.add(issuer.issuer)
        if unknown := sorted(self.admins - set(self.api_keys)):
            raise ConfigError(
                f"FILESHARE_ADMINS names {', '.join(unknown)}, not in FILESHARE_API_KEYS"
            )
        for principal, key in self.api_keys.items():
            if len(key) < 16:
                raise ConfigError(f"the API key of {principal!r} is shorter than 16 characters")
        if self.log_format not in ("json", "console"):
            raise ConfigError("FILESHARE_LOG_FORMAT must be json or console")
        if not 1 <= self.token_lifetime <= MAX_TOKEN_LIFETIME:
            raise ConfigError(
                f"FILESHARE_TOKEN_LIFETIME must be from 1 to {MAX_TOKEN_LIFETIME:g} seconds"
            )
        # "not <=" also refuses NaN; a key signing at least an hour keeps the published set
        # small (its successor is published a quarter of that ahead).
        if not MIN_KEY_ROTATION <= self.signing_key_rotation < float("inf"):
            raise ConfigError(
                f"FILESHARE_SIGNING_KEY_ROTATION must be at least {MIN_KEY_ROTATION:g} seconds"
            )
        if self.token_audience is not None and not self.token_audience.strip():
            raise ConfigError("FILESHARE_TOKEN_AUDIENCE must not be blank")
        if self.index_url is not None:
            # never echo the value: it carries a password
            scheme, sep, _ = self.index_url.partition("://")
            if not sep or scheme.lower() not in ("postgresql", "postgres"):
                raise ConfigError(
                    "FILESHARE_INDEX_URL must be a postgresql:// (or postgres://) URL"
                    + (f", not {scheme}://" if sep and scheme.isalnum() else "")
                )
            if (problem := postgres_problem(self.index_url, self.plaintext_hosts)) is not None:
                raise ConfigError(f"FILESHARE_INDEX_URL {problem}")

    @property
    def hsts_header(self) -> str | None:
        """``Strict-Transport-Security`` for every answer when fileshare is reached over
        https: a browser (the docs page, a partner's upload form) then never falls back
        to plain http for this host, whatever a link says."""
        if self.hsts_max_age == 0 or urlsplit(self.base_url).scheme.lower() != "https":
            return None
        return f"max-age={self.hsts_max_age}"

    @property
    def encryption(self) -> Encryption:
        return Encryption(
            mode=self.storage_encryption or default_mode(self.storage),
            kms_key=self.storage_kms_key,
            bucket_key=self.s3_bucket_key,
        )

    def endpoint_problem(self, url: str) -> str | None:
        if self.storage == "gcs" and "://" not in url:
            # ``host:port`` (the STORAGE_EMULATOR_HOST form) is plain http to the backend.
            url = f"http://{url}"
        return http_endpoint_problem(url, self.plaintext_hosts)

    def plaintext_uses(self) -> list[Plaintext]:
        """The dependencies reached without TLS outside loopback (start-up warns)."""
        endpoint = {"s3": self.s3_endpoint, "gcs": self.gcs_endpoint}.get(self.storage)
        return list(
            plaintext_uses(
                storage_endpoint=endpoint,
                index_dsn=self.index_url,
                clamd_host=self.clamd.host,
                jwks_urls=tuple(i.jwks_url for i in self.jwt_issuers),
            )
        )

    def jwks_plain_http(self, url: str) -> bool:
        """Whether this issuer's keys may come over plain http."""
        host = urlsplit(url).hostname or ""
        return self.jwks_allow_http or plaintext_allowed(host, self.plaintext_hosts)

    @property
    def per_upload_memory(self) -> int:
        """What one upload may hold at once: the part being filled and the parts being
        sent, plus one socket chunk. At least three parts: a body that fits in one part
        is held as its pieces, their join, and the HTTP client's copy while it is PUT."""
        return self.part_size * (max(self.parts_in_flight, 2) + 1) + MiB

    @property
    def unscannable_policy(self) -> Unscannable:
        if self.unscannable is not None:
            return self.unscannable
        return Unscannable.REJECT if self.quarantine_bucket is None else Unscannable.QUARANTINE

    @property
    def sqlite_path(self) -> Path:
        return self.index_path or self.data_dir / "index.sqlite3"

    @property
    def base_url(self) -> str:
        return self.public_base_url.rstrip("/")

    @property
    def token_aud(self) -> str:
        """The ``aud`` of fileshare's own tokens."""
        return self.token_audience or self.base_url


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: Tokens of fileshare's own endpoint live at most an hour: they cannot be recalled (but a
#: revoked client's stop at once: its record is read on every request).
MAX_TOKEN_LIFETIME = 3600.0
MIN_KEY_ROTATION = 3600.0
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_GCS_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")
_LOCAL_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_ENDS = "starting and ending with a letter or digit"


def bucket_name_problem(name: str, storage: str) -> str | None:
    """What is wrong with a bucket name for this backend (S3's and GCS's rules differ),
    or None. The local backend takes S3-like names: they are directory names."""
    if storage == "s3":
        if not _S3_BUCKET.fullmatch(name):
            return f"is not an S3 bucket name: 3-63 of a-z 0-9 . -, {_ENDS}"
        if ".." in name or ".-" in name or "-." in name:
            return "is not an S3 bucket name: no two dots, and no dot next to a hyphen"
        if _IP_ADDRESS.fullmatch(name):
            return "is not an S3 bucket name: it must not look like an IP address"
        if name.startswith(("xn--", "sthree-")) or name.endswith(("-s3alias", "--ol-s3")):
            return "is not an S3 bucket name: reserved prefix or suffix"
        return None
    if storage == "gcs":
        if not _GCS_BUCKET.fullmatch(name):
            return f"is not a GCS bucket name: 3-222 of a-z 0-9 - _ ., {_ENDS}"
        if any(len(part) > 63 or not part for part in name.split(".")):
            return "is not a GCS bucket name: each dot-separated part is 1-63 characters"
        if "." not in name and len(name) > 63:
            return "is not a GCS bucket name: at most 63 characters without dots"
        if _IP_ADDRESS.fullmatch(name):
            return "is not a GCS bucket name: it must not look like an IP address"
        if name.startswith("goog") or "google" in name or "g00gle" in name:
            return 'is not a GCS bucket name: it must not start with "goog" or hold "google"'
        return None
    if not _LOCAL_BUCKET.fullmatch(name) or ".." in name:
        return f"is not a bucket name: 3-63 of a-z 0-9 . _ -, {_ENDS}"
    return None


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": MiB, "g": GiB}


def parse_size(value: str, name: str) -> int:
    m = _SIZE.match(value)
    if not m:
        raise ConfigError(f"{name}: {value!r} is not a size (e.g. 512MiB, 8388608)")
    unit = (m.group(2) or "")[:1].lower()
    return int(m.group(1)) * _UNITS[unit]


def _read_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"FILESHARE_CONFIG: cannot read {path}: {exc.strerror}") from None
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected KEY=value")
        values[key.strip()] = value.strip().strip('"').strip("'")
    return values


def _parse_api_keys(value: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in value.split(","))):
        principal, sep, key = item.partition(":")
        if not sep or not principal or not key:
            raise ConfigError("FILESHARE_API_KEYS: expected principal:key[,principal:key...]")
        keys[principal] = key
    return keys


_ISSUER_KEYS = frozenset(
    {
        "issuer",
        "jwks_url",
        "audience",
        "algorithms",
        "scope_claim",
        "role_claim",
        "owner_claim",
        "default_role",
        "allowed_roles",
    }
)


def _parse_jwt_issuers(value: str) -> tuple[JwtIssuer, ...]:
    """``FILESHARE_JWT_ISSUERS``: a JSON list of objects; types are checked here, the rules
    (https, algorithms) by ``Settings.validate``."""
    name = "FILESHARE_JWT_ISSUERS"
    try:
        items = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(items, list):
        raise ConfigError(f"{name}: expected a JSON list of issuer objects")
    return tuple(_parse_jwt_issuer(item, f"{name}[{n}]") for n, item in enumerate(items))


def _parse_jwt_issuer(item: object, where: str) -> JwtIssuer:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected an object")
    if unknown := sorted(set(item) - _ISSUER_KEYS):
        raise ConfigError(
            f"{where}: unknown member(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_ISSUER_KEYS))}"
        )

    def text(key: str, default: str | None = None) -> str:
        v = item.get(key, default)
        if not isinstance(v, str):
            raise ConfigError(f"{where}: {key} must be a string")
        return v

    def texts(key: str, default: tuple[str, ...] | None = None) -> tuple[str, ...]:
        v = item.get(key, default)
        if isinstance(v, str):
            return (v,)
        if isinstance(v, list | tuple) and all(isinstance(s, str) for s in v):
            return tuple(v)
        raise ConfigError(f"{where}: {key} must be a string or a list of strings")

    try:
        role = Role(text("default_role", Role.PARTICIPANT.value))
    except ValueError:
        raise ConfigError(
            f"{where}: default_role must be one of {', '.join(r.value for r in Role)}"
        ) from None
    try:
        allowed = frozenset(Role(r) for r in texts("allowed_roles", tuple(JwtIssuer.allowed_roles)))
    except ValueError:
        raise ConfigError(
            f"{where}: allowed_roles must be among {', '.join(r.value for r in Role)}"
        ) from None
    if role not in allowed:
        raise ConfigError(f"{where}: default_role {role.value} is not in allowed_roles")
    return JwtIssuer(
        issuer=text("issuer"),
        jwks_url=text("jwks_url"),
        audiences=texts("audience"),
        algorithms=texts("algorithms", JwtIssuer.algorithms),
        scope_claim=text("scope_claim", JwtIssuer.scope_claim),
        role_claim=text("role_claim", JwtIssuer.role_claim),
        owner_claim=None if item.get("owner_claim") is None else text("owner_claim"),
        default_role=role,
        allowed_roles=allowed,
    )


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse_bool(value: str, name: str) -> bool:
    if value.strip().lower() in _TRUE:
        return True
    if value.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{name}: {value[:40]!r} is not true or false")


#: Every setting's variable (without ``FILESHARE_``), by how its value is parsed.
_STRINGS = {
    "STORAGE": "storage",
    "PROMOTION": "promotion",
    "TYPE_CHECK": "type_check",
    "UNSCANNED_BUCKET": "unscanned_bucket",
    "PERMANENT_BUCKET": "permanent_bucket",
    "S3_ENDPOINT": "s3_endpoint",
    "S3_REGION": "s3_region",
    "S3_ACCESS_KEY": "s3_access_key",
    "S3_SECRET_KEY": "s3_secret_key",
    "GCS_ENDPOINT": "gcs_endpoint",
    "GCS_PROJECT": "gcs_project",
    "INDEX_URL": "index_url",
    "HOST": "host",
    "PUBLIC_BASE_URL": "public_base_url",
    "LOG_FORMAT": "log_format",
    "LOG_LEVEL": "log_level",
    "TOKEN_AUDIENCE": "token_audience",
    "STORAGE_ENCRYPTION": "storage_encryption",
    "STORAGE_KMS_KEY": "storage_kms_key",
    "LINKS_BUCKET": "links_bucket",
    "QUARANTINE_BUCKET": "quarantine_bucket",
    "UNSCANNABLE": "unscannable",
    "LINKS_SCOPE": "links_scope",
    "SQS_QUEUE_URL": "sqs_queue_url",
    "SQS_ENDPOINT": "sqs_endpoint",
    "EVENTS_TOKEN": "events_token",
}
_SIZES = {
    "PART_SIZE": "part_size",
    "MAX_UPLOAD_SIZE": "max_upload_size",
    "MEMORY_BUDGET": "memory_budget",
    "DIRECT_PUT_MAX": "direct_put_max",
    "DIRECT_PART_SIZE": "direct_part_size",
}
_INTS = {
    "PORT": "port",
    "PARTS_IN_FLIGHT": "parts_in_flight",
    "CLAMD_MAX_SCANS": "clamd_max_scans",
    "HSTS_MAX_AGE": "hsts_max_age",
    "MAX_LINE_SIZE": "max_line_size",
    "MAX_FIELD_SIZE": "max_field_size",
    "MAX_HEADERS": "max_headers",
    "DIRECT_URL_TTL": "direct_url_ttl",
    "REDIRECT_TTL": "redirect_ttl",
    "WEBHOOK_ATTEMPTS": "webhook_attempts",
}
_FLOATS = {
    "STORAGE_TIMEOUT": "storage_timeout",
    "CLAMD_CONNECT_TIMEOUT": "clamd_connect_timeout",
    "CLAMD_IDLE_TIMEOUT": "clamd_idle_timeout",
    "CLAMD_VERDICT_TIMEOUT": "clamd_verdict_timeout",
    "CLAMD_START_TIMEOUT": "clamd_start_timeout",
    "BUDGET_WAIT": "budget_wait",
    "SHUTDOWN_GRACE": "shutdown_grace",
    "SWEEP_INTERVAL": "sweep_interval",
    "RESCAN_INTERVAL": "rescan_interval",
    "RESCAN_AFTER": "rescan_after",
    "RESCAN_ON_DOWNLOAD": "rescan_on_download",
    "STAGING_MAX_AGE": "staging_max_age",
    "RECONCILE_INTERVAL": "reconcile_interval",
    "TOKEN_LIFETIME": "token_lifetime",
    "SIGNING_KEY_ROTATION": "signing_key_rotation",
    "WEBHOOK_BACKOFF": "webhook_backoff",
    "WEBHOOK_TIMEOUT": "webhook_timeout",
}
_OTHERS = {
    "DATA_DIR": "data_dir",
    "INDEX_PATH": "index_path",
    "GCS_SIGNING_CREDENTIALS": "gcs_signing_credentials",
    "CLAMD": "clamd",
    "API_KEYS": "api_keys",
    "ADMINS": "admins",
    "JWT_ISSUERS": "jwt_issuers",
    "JWKS_ALLOW_HTTP": "jwks_allow_http",
    "S3_BUCKET_KEY": "s3_bucket_key",
    "DOWNLOAD_REDIRECT": "download_redirect",
    "PLAINTEXT_HOSTS": "plaintext_hosts",
    "ALLOWED_TYPES": "allowed_types",
    "WEBHOOK_PRIVATE_HOSTS": "webhook_private_hosts",
}
#: ``Settings`` field -> its environment variable (config/fileshare.example.env lists them).
VARIABLES = {
    attr: f"FILESHARE_{name}"
    for table in (_STRINGS, _SIZES, _INTS, _FLOATS, _OTHERS)
    for name, attr in table.items()
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from the environment (and ``FILESHARE_CONFIG`` if set)."""
    env = dict(os.environ if environ is None else environ)
    raw: dict[str, str] = {}
    if env.get("FILESHARE_CONFIG"):
        raw.update(_read_file(Path(env["FILESHARE_CONFIG"])))
    raw.update({k: v for k, v in env.items() if k.startswith("FILESHARE_")})

    def get(name: str) -> str | None:
        return raw.get(f"FILESHARE_{name}")

    kwargs: dict[str, object] = {}
    for env_name, attr in _STRINGS.items():
        if (v := get(env_name)) is not None and v != "":
            kwargs[attr] = v
    for env_name, attr in _SIZES.items():
        if v := get(env_name):
            kwargs[attr] = parse_size(v, f"FILESHARE_{env_name}")
    for env_name, attr in _INTS.items():
        if v := get(env_name):
            try:
                kwargs[attr] = int(v)
            except ValueError:
                raise ConfigError(f"FILESHARE_{env_name}: {v!r} is not an integer") from None
    for env_name, attr in _FLOATS.items():
        if v := get(env_name):
            try:
                kwargs[attr] = float(v)
            except ValueError:
                raise ConfigError(f"FILESHARE_{env_name}: {v!r} is not a number") from None
    if v := get("DATA_DIR"):
        kwargs["data_dir"] = Path(v)
    if v := get("INDEX_PATH"):
        kwargs["index_path"] = Path(v)
    if v := get("GCS_SIGNING_CREDENTIALS"):
        kwargs["gcs_signing_credentials"] = Path(v)
    if v := get("CLAMD"):
        kwargs["clamd"] = ClamdAddress.parse(v)
    if v := get("ADMINS"):
        kwargs["admins"] = frozenset(filter(None, (p.strip() for p in v.split(","))))
    if v := get("API_KEYS"):
        kwargs["api_keys"] = _parse_api_keys(v)
    if v := get("JWT_ISSUERS"):
        kwargs["jwt_issuers"] = _parse_jwt_issuers(v)
    if v := get("JWKS_ALLOW_HTTP"):
        kwargs["jwks_allow_http"] = _parse_bool(v, "FILESHARE_JWKS_ALLOW_HTTP")
    if v := get("S3_BUCKET_KEY"):
        kwargs["s3_bucket_key"] = _parse_bool(v, "FILESHARE_S3_BUCKET_KEY")
    if v := get("DOWNLOAD_REDIRECT"):
        kwargs["download_redirect"] = _parse_bool(v, "FILESHARE_DOWNLOAD_REDIRECT")
    if v := get("UNSCANNABLE"):
        try:
            kwargs["unscannable"] = Unscannable(v)
        except ValueError:
            raise ConfigError(
                f"FILESHARE_UNSCANNABLE must be reject or quarantine, not {v[:40]!r}"
            ) from None
    if v := get("ALLOWED_TYPES"):
        kwargs["allowed_types"] = frozenset(filter(None, (media_type(t) for t in v.split(","))))
    if v := get("PLAINTEXT_HOSTS"):
        kwargs["plaintext_hosts"] = frozenset(
            filter(None, (plaintext_host_entry(h) for h in v.split(",")))
        )
    if v := get("WEBHOOK_PRIVATE_HOSTS"):
        kwargs["webhook_private_hosts"] = frozenset(
            filter(None, (h.strip().lower() for h in v.split(",")))
        )
    if "gcs_endpoint" not in kwargs and env.get("STORAGE_EMULATOR_HOST"):
        # google-cloud's convention, which the GCS backend honours too: checked here like
        # the setting itself (it is plain http to an emulator, anonymous).
        kwargs["gcs_endpoint"] = env["STORAGE_EMULATOR_HOST"]
    if "index_url" in kwargs:
        kwargs["index_url"] = with_pg_environment(str(kwargs["index_url"]), env)
    return Settings(**kwargs)  # type: ignore[arg-type]


def settings_or_report() -> Settings | None:
    """The settings for a server-side command (``serve``, ``audit verify``, ``rescan``...),
    or None once what is wrong with them has been said on stderr; each command then exits
    with its own code."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"fileshare: configuration error: {exc}", file=sys.stderr)
        return None


def with_pg_environment(dsn: str, env: Mapping[str, str]) -> str:
    """The index URL with what asyncpg would take from ``PGHOST`` and ``PGSSLMODE`` written
    into it, so that the TLS rules check what will really be used (a ``PGSERVICE`` file,
    which could name anything, is refused)."""
    if env.get("PGSERVICE"):
        raise ConfigError("FILESHARE_INDEX_URL: PGSERVICE is set; name the host in the URL")
    query = parse_qs(urlsplit(dsn).query)
    extra = {}
    if "sslmode" not in query and env.get("PGSSLMODE"):
        extra["sslmode"] = env["PGSSLMODE"]
    if not postgres_authority_host(dsn) and "host" not in query and env.get("PGHOST"):
        extra["host"] = env["PGHOST"]
    if not extra:
        return dsn
    return dsn + ("&" if urlsplit(dsn).query else "?") + urlencode(extra)
