"""The policy's route table and the router agree: no route is open by omission."""

import pytest

from fileshare import errors
from fileshare.app import create_app
from fileshare.auth import policy
from fileshare.auth.principal import ROLE_SCOPES, Principal, Role, Scope
from fileshare.config import Settings

SETTINGS = Settings(api_keys={"dev": "dev-key-0123456789abcdef"})


def test_every_route_has_a_requirement_and_every_requirement_a_route() -> None:
    app = create_app(SETTINGS)
    routed = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in ("*", "HEAD")
    }
    assert routed == set(policy.ROUTES)


def test_a_route_missing_from_the_table_is_refused_to_everybody() -> None:
    admin = Principal("root", "root", Role.ADMIN, frozenset(Scope), "root", "api_key")
    assert policy.requirement("GET", "/v1/not-listed") is None
    with pytest.raises(errors.Forbidden):
        policy.authorize(admin, "GET", "/v1/not-listed")


def test_head_is_checked_as_get() -> None:
    assert policy.requirement("HEAD", "/v1/files/{file_id}") is Scope.FILES_READ


def test_roles_cap_scopes() -> None:
    assert Scope.FILES_WRITE not in ROLE_SCOPES[Role.RESEARCHER]
    assert Scope.ADMIN not in ROLE_SCOPES[Role.WORKER]
    assert ROLE_SCOPES[Role.ADMIN] == frozenset(Scope)


def test_a_wrong_method_on_a_public_path_needs_no_credentials_elsewhere_it_does() -> None:
    # no route matched (405/404): public paths are still public, every other path is not
    assert policy.is_public("POST", None, "/healthz")
    assert policy.is_public("DELETE", None, "/problems/not_found")
    assert not policy.is_public("PATCH", None, "/v1/files")
    assert not policy.is_public("GET", None, "/problems/a/b")
    assert not policy.is_public("GET", None, "/v1/nothing-here")
