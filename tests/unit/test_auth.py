import pytest

from fileshare import errors
from fileshare.auth.base import Authentication, presented
from fileshare.auth.keys import BootstrapKeys
from fileshare.auth.principal import ROLE_SCOPES, Role

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789ab"}


async def test_bearer_and_header_keys_name_the_principal() -> None:
    auth = Authentication([BootstrapKeys(KEYS, admins={"bob"})])
    alice = await auth.authenticate("Bearer alice-key-0123456789", None)
    assert (alice.subject, alice.owner, alice.role) == ("alice", "alice", Role.PARTICIPANT)
    assert alice.scopes == ROLE_SCOPES[Role.PARTICIPANT]
    bob = await auth.authenticate(None, "bob-key-0123456789ab")
    assert (bob.subject, bob.role) == ("bob", Role.ADMIN)


@pytest.mark.parametrize(
    ("authorization", "api_key"),
    [
        (None, None),
        ("Bearer ", None),
        ("Basic YWxpY2U6eA==", None),
        ("Bearer alice-key-012345678", None),  # one character short
        ("Bearer alice-key-0123456789x", None),
        (None, "nope"),
        ("Bearer \udcff", None),
        ("Bearer fsk_0123456789abcdef_notregisteredanywhere", None),
    ],
)
async def test_wrong_credentials_are_401(authorization: str | None, api_key: str | None) -> None:
    with pytest.raises(errors.Unauthenticated):
        await Authentication([BootstrapKeys(KEYS)]).authenticate(authorization, api_key)


def test_the_credential_comes_from_bearer_or_the_key_header() -> None:
    assert presented("Bearer  abc ", None) == "abc"
    assert presented(None, " abc") == "abc"
    with pytest.raises(errors.Unauthenticated):
        presented("Token abc", None)
