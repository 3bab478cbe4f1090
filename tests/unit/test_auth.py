import pytest

from fileshare import errors
from fileshare.api.auth import ApiKeyAuthenticator

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-0123456789ab"}


def test_bearer_and_header_keys_name_the_principal() -> None:
    auth = ApiKeyAuthenticator(KEYS)
    assert auth.authenticate("Bearer alice-key-0123456789", None) == "alice"
    assert auth.authenticate(None, "bob-key-0123456789ab") == "bob"


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
    ],
)
def test_wrong_credentials_are_401(authorization: str | None, api_key: str | None) -> None:
    with pytest.raises(errors.Unauthenticated):
        ApiKeyAuthenticator(KEYS).authenticate(authorization, api_key)
