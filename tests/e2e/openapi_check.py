"""Every answer the e2e tests receive, checked against the OpenAPI document the app serves.

``ValidatingClient`` is the e2e suites' ``TestClient``: after each response arrives it hands
the exchange to an ``ApiContract`` (openapi-core validators, compiled once per document and
session) and raises ``ContractViolation`` — an ``AssertionError`` — in the test that made the
request. What is checked:

- the answer: its status is documented for the operation; its content type is one the
  document lists; a JSON body (read at once, it is small) matches its schema, with no
  undocumented members; documented headers match (required ones must be there); an answer
  documented without a body carries none. Streamed downloads are checked without reading
  them: status, headers and content type only. A path or method the document does not have
  must be answered with a 401/404/405 problem.
- the request, but only when the answer was 2xx: tests send malformed requests on purpose,
  and a refused request is the server agreeing with the document. An *accepted* request that
  the document calls invalid (or a query parameter it does not list) means the document is
  stricter than the server, so a client generated from it could not make that call.
  Upload bodies are streamed and binary: only JSON bodies are validated.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import StrOrURL
from jsonschema_path import SchemaPath
from multidict import CIMultiDictProxy, MultiDictProxy
from openapi_core import OpenAPI
from openapi_core.casting.schemas import oas31_types_caster
from openapi_core.casting.schemas.factories import SchemaCastersFactory
from openapi_core.datatypes import RequestParameters
from openapi_core.deserializing.media_types.util import json_loads
from openapi_core.templating.paths.datatypes import PathOperationServer
from openapi_core.templating.paths.exceptions import PathError
from openapi_core.templating.paths.finders import APICallPathFinder
from openapi_core.validation.request.validators import (
    V31RequestBodyValidator,
    V31RequestParametersValidator,
    V31RequestSecurityValidator,
)
from openapi_core.validation.response.validators import (
    V31ResponseHeadersValidator,
    V31ResponseValidator,
)
from openapi_core.validation.schemas import oas31_schema_validators_factory
from openapi_core.validation.schemas.factories import DialectSchemaValidatorsFactory
from openapi_core.validation.schemas.validators import SchemaValidator
from openapi_schema_validator import OAS31Validator
from yarl import URL


class ContractViolation(AssertionError):
    """An answer (or an accepted request) that the served OpenAPI document does not allow."""


@dataclass
class _Request:
    """openapi-core's Request protocol, for a request the test client sent."""

    host_url: str
    path: str
    #: The matched template: openapi-core then finds the operation without parsing the path.
    path_pattern: str
    method: str
    parameters: RequestParameters
    content_type: str
    body: bytes | None


@dataclass
class _Response:
    """openapi-core's Response protocol, for an answer the test client received."""

    status_code: int
    content_type: str
    headers: Mapping[str, str]
    data: bytes | None


@dataclass
class _Operation:
    method: str
    template: str
    path_item: SchemaPath
    operation: SchemaPath
    #: The path's variables, percent-decoded as the server sees them.
    variables: dict[str, str]


@dataclass
class Exchange:
    method: str
    url: URL
    request_headers: Mapping[str, str]
    request_body: bytes | None
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return f"{self.method} {self.url.path_qs} -> {self.status} {self.content_type or '-'}"

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _template(path: str) -> re.Pattern[str]:
    """A path template as a regex over the raw path: each variable one whole segment."""
    parts = re.split(r"\{([^}]+)\}", path)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{_group(part)}>[^/]+)"
        for i, part in enumerate(parts)
    )
    return re.compile(regex)


def _group(name: str) -> str:
    # Group names must be identifiers; these variables are (fileId, client_id, ...).
    assert name.isidentifier(), name
    return name


class _CachedPathFinder(APICallPathFinder):
    """The operation of (method, URL template), found once."""

    def __init__(self, spec: SchemaPath, base_url: str | None = None) -> None:
        super().__init__(spec, base_url=base_url)
        self._found: dict[tuple[str, str], PathOperationServer] = {}

    def find(self, method: str, name: str) -> PathOperationServer:
        key = (method, name)
        if key not in self._found:
            self._found[key] = super().find(method, name)
        return self._found[key]


class _CompiledSchemas(DialectSchemaValidatorsFactory):
    """openapi-core's OAS 3.1 schema validators, each compiled once per schema and mode."""

    def __init__(self) -> None:
        base = oas31_schema_validators_factory
        super().__init__(
            base.schema_validator_cls, base.default_jsonschema_dialect_id, base.format_checker
        )
        self._made: dict[tuple[str, bool, bool], SchemaValidator] = {}

    def create(
        self,
        spec: SchemaPath,
        schema: SchemaPath,
        format_validators: Any = None,
        extra_format_validators: Any = None,
        forbid_unspecified_additional_properties: bool = False,
        enforce_properties_required: bool = False,
    ) -> SchemaValidator:
        # Not used here, and not part of the key.
        assert format_validators is None
        assert extra_format_validators is None
        key = (
            schema.as_uri(),
            forbid_unspecified_additional_properties,
            enforce_properties_required,
        )
        if key not in self._made:
            self._made[key] = super().create(
                spec,
                schema,
                forbid_unspecified_additional_properties=forbid_unspecified_additional_properties,
                enforce_properties_required=enforce_properties_required,
            )
        return self._made[key]


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _describe(exc: BaseException) -> list[str]:
    """An openapi-core error as lines a reader can act on (the schema errors it wraps)."""
    name = getattr(exc, "name", None)  # the header or parameter, when it is about one
    lines = [f"{type(exc).__name__}{f' ({name})' if name else ''}: {exc}"]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for schema_error in getattr(current, "schema_errors", None) or ():
            where = "/".join(str(p) for p in getattr(schema_error, "absolute_path", ()))
            message = getattr(schema_error, "message", str(schema_error))
            lines.append(f"    at /{where}: {message}")
        current = current.__cause__ or current.__context__
    return lines


class ApiContract:
    """One served OpenAPI document, compiled once: the validators every exchange goes through."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        #: Requests are validated as if they came to the server the document names: the test
        #: client's loopback address stands in for the public base URL.
        self.server = str(document["servers"][0]["url"]).rstrip("/")
        # Checks the document itself once (it must be valid OpenAPI 3.1).
        self.spec: SchemaPath = OpenAPI.from_dict(dict(document)).spec
        self._finder = _CachedPathFinder(self.spec)
        # Most specific first, as openapi-core orders them: fewer variables.
        self._templates = sorted(
            ((_template(path), path) for path in document["paths"]), key=lambda t: t[1].count("{")
        )
        # openapi-core parses only a few JSON media types by name; ours are JSON too. And an
        # object schema is closed unless it says otherwise: an undocumented member is drift.
        strict: dict[str, Any] = {
            "forbid_unspecified_additional_properties": True,
            "extra_media_type_deserializers": {
                t: json_loads
                for t in (
                    "application/problem+json",
                    "application/merge-patch+json",
                    "application/fhir+json",
                )
            },
        }
        # openapi-core would compile a JSON Schema validator (a validator class, even, in the
        # strict mode) and walk the paths on every call: ~35 ms an answer. Once is enough.
        compiled = _CompiledSchemas()
        once: dict[str, Any] = {
            "schema_validators_factory": compiled,
            "schema_casters_factory": SchemaCastersFactory(compiled, oas31_types_caster),
            "path_finder_cls": _CachedPathFinder,
        }
        self._response = V31ResponseValidator(self.spec, **strict, **once)
        self._headers = V31ResponseHeadersValidator(self.spec, **once)
        self._parameters = V31RequestParametersValidator(self.spec, **once)
        self._security = V31RequestSecurityValidator(self.spec, **once)
        self._body = V31RequestBodyValidator(self.spec, **strict, **once)
        self._problem = OAS31Validator(
            {"$ref": "#/components/schemas/Problem", "components": document["components"]}
        )

    def _operation(self, method: str, url: URL) -> _Operation | None:
        """The documented operation, or None for an unknown route. HEAD falls back on GET,
        as aiohttp answers HEAD on every GET route. Matched on the raw path, segment by
        segment as the server does (``a%2Fb`` is one segment), its variables then decoded."""
        for regex, template in self._templates:
            matched = regex.fullmatch(url.raw_path)
            if matched is None:
                continue
            for candidate in (method, "get") if method == "head" else (method,):
                try:
                    found = self._finder.find(candidate, self.server + template)
                except PathError:
                    continue
                variables = {k: unquote(v) for k, v in matched.groupdict().items()}
                return _Operation(candidate, template, found.path, found.operation, variables)
        return None

    def check(self, exchange: Exchange) -> None:
        errors = self._errors(exchange)
        if errors:
            body = ""
            if exchange.body:
                body = "\n  body: " + exchange.body[:600].decode("utf-8", "replace")
            raise ContractViolation(
                f"the OpenAPI document does not allow {exchange.label}:\n  "
                + "\n  ".join(errors)
                + body
            )

    def needs_body(self, method: str, url: URL, status: int, content_type: str) -> bool:
        """Whether the answer's body is to be read and validated: JSON only, never a
        streamed download (even of a JSON file: a download is documented as ``*/*``)."""
        if method.lower() == "head":
            return False
        found = self._operation(method.lower(), url)
        if found is None:
            return _is_json(content_type)
        response = self._response_for(found.operation, status)
        if response is None or "content" not in response:
            return False
        media = self._media_type(response, content_type)
        return media is not None and _is_json(media)

    @staticmethod
    def _response_for(operation: SchemaPath, status: int) -> SchemaPath | None:
        responses = operation / "responses"
        for key in (str(status), f"{str(status)[0]}XX", "default"):
            if key in responses:
                return responses / key
        return None

    @staticmethod
    def _media_type(response: SchemaPath, content_type: str) -> str | None:
        if not content_type:
            return None
        keys = list((response / "content").str_keys())
        if content_type in keys:
            return content_type
        return next((k for k in keys if fnmatch.fnmatch(content_type, k)), None)

    def _errors(self, exchange: Exchange) -> list[str]:
        method = exchange.method.lower()
        found = self._operation(method, exchange.url)
        if found is None:
            return self._unknown_route(exchange)
        operation = found.operation
        response = self._response_for(operation, exchange.status)
        if response is None:
            keys = ", ".join((operation / "responses").str_keys())
            return [f"status {exchange.status} is not documented (documented: {keys})"]
        errors: list[str] = []
        request = self._request(exchange, found)
        answer = _Response(
            status_code=exchange.status,
            content_type=exchange.headers.get("Content-Type", ""),
            headers=exchange.headers,
            data=exchange.body,
        )
        has_body = method != "head" and exchange.status not in (204, 304)
        if "content" in response:
            media = self._media_type(response, exchange.content_type)
            if has_body and media is None:
                keys = ", ".join((response / "content").str_keys())
                errors.append(
                    f"content type {exchange.content_type or '(none)'!r} is not documented "
                    f"for {exchange.status} (documented: {keys})"
                )
        elif has_body and (
            exchange.headers.get("Content-Length", "0") != "0"
            or "Transfer-Encoding" in exchange.headers
        ):
            errors.append(f"{exchange.status} is documented without a body, but has one")
        validator: Any = self._response if exchange.body is not None else self._headers
        if found.method != method:  # HEAD on a GET route: headers only
            validator = self._headers
        for error in validator.iter_errors(request, answer):
            errors += _describe(error)
        if 200 <= exchange.status < 300:
            errors += self._request_errors(exchange, request, found)
        return errors

    def _unknown_route(self, exchange: Exchange) -> list[str]:
        # 401 too: credentials are checked before routing, on every path that is not public.
        if exchange.status not in (401, 404, 405):
            return [f"no such operation in the document, yet answered {exchange.status}"]
        if exchange.content_type != "application/problem+json" or exchange.body is None:
            return ["an unknown route must be answered with a problem+json"]
        return [
            f"problem: at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in self._problem.iter_errors(json.loads(exchange.body))
        ]

    def _request(self, exchange: Exchange, found: _Operation) -> _Request:
        return _Request(
            host_url=self.server,
            path=exchange.url.raw_path,
            path_pattern=found.template,
            method=found.method,
            parameters=RequestParameters(
                query=MultiDictProxy(exchange.url.query),
                header=exchange.request_headers,
                path=found.variables,
            ),
            content_type=exchange.request_headers.get("Content-Type", ""),
            body=exchange.request_body,
        )

    def _request_errors(
        self, exchange: Exchange, request: _Request, found: _Operation
    ) -> list[str]:
        errors: list[str] = []
        documented = {
            (p / "name").read_str()
            for where in (found.path_item, found.operation)
            if "parameters" in where
            for p in where / "parameters"
            if (p / "in").read_str() == "query"
        }
        for name in sorted(set(exchange.url.query) - documented):
            errors.append(f"request: query parameter {name!r} is accepted but not documented")
        checks: Iterable[Any] = (self._security, self._parameters)
        for validator in checks:
            for error in validator.iter_errors(request):
                errors += ["request: " + line for line in _describe(error)]
        content_type = request.content_type.split(";")[0].strip().lower()
        if request.body is not None and _is_json(content_type):
            for error in self._body.iter_errors(request):
                errors += ["request: " + line for line in _describe(error)]
        return errors


class Contracts:
    """Compiled documents by their bytes: one compile per distinct document per session."""

    def __init__(self) -> None:
        self._by_digest: dict[str, ApiContract] = {}

    def get(self, served: bytes) -> ApiContract:
        digest = hashlib.sha256(served).hexdigest()
        if digest not in self._by_digest:
            self._by_digest[digest] = ApiContract(json.loads(served))
        return self._by_digest[digest]


def _request_body(kwargs: Mapping[str, Any]) -> bytes | None:
    """The body as sent, when the test gave it whole (``json=`` or bytes/str ``data=``)."""
    if kwargs.get("json") is not None:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    if isinstance(data, str):
        return data.encode()
    return None


class ValidatingClient(TestClient[web.Request, web.Application]):
    """A TestClient whose every answer is checked against ``contract`` (once it is set)."""

    contract: ApiContract | None = None

    async def _request(self, method: str, path: StrOrURL, **kwargs: Any) -> ClientResponse:
        resp = await super()._request(method, path, **kwargs)
        if self.contract is not None:
            await check_response(self.contract, resp, _request_body(kwargs))
        return resp


async def check_response(
    contract: ApiContract, resp: ClientResponse, request_body: bytes | None = None
) -> None:
    """Check one answer (reading its body first if it is JSON; aiohttp keeps it for the test)."""
    info = resp.request_info
    content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    body = None
    if contract.needs_body(info.method, info.url, resp.status, content_type):
        body = await resp.read()
    contract.check(
        Exchange(
            method=info.method,
            url=info.url,
            request_headers=info.headers,
            request_body=request_body,
            status=resp.status,
            headers=resp.headers,
            body=body,
        )
    )
