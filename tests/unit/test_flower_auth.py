"""Which auth Flower must require, from ORCH_FLOWER_AUTH, Flower's own options or the explicit opt-out."""

from __future__ import annotations

import pytest

from orch.errors import ConfigInvalid
from orch.services.flower import (
    MIN_PASSWORD_CHARS,
    MISSING_AUTH,
    NO_AUTH_WARNING,
    FlowerAuth,
    basic_auth_entries,
    resolve_flower_auth,
)
from orch.settings import Settings


def settings(**values: object) -> Settings:
    return Settings(**values)  # type: ignore[arg-type]


def test_orch_flower_auth_gives_flower_its_basic_auth_entries() -> None:
    auth = resolve_flower_auth(settings(flower_auth="ops:ops-pass-0001,viewer:p:w:view-pass-2"), (), {})
    assert auth == FlowerAuth(basic_auth=("ops:ops-pass-0001", "viewer:p:w:view-pass-2"))


@pytest.mark.parametrize("value", ["", ",", "ops", "ops:", ":pw", "ops:pw,viewer-without-colon"])
def test_a_malformed_value_is_refused_without_showing_it(value: str) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        basic_auth_entries(value)
    assert "ORCH_FLOWER_AUTH" in str(caught.value)
    if len(value) > 3:
        assert value not in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("value", "number"), [("ops:tiny-pw", 1), ("ops:long-enough-1,viewer:eleven-char", 2), ("ops:a:b:c:d:e:f", 1)]
)
def test_a_password_shorter_than_12_characters_is_refused_by_position_without_showing_it(
    value: str, number: int
) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        basic_auth_entries(value)
    entries = value.count(",") + 1
    assert str(caught.value) == (
        f"ORCH_FLOWER_AUTH entry {number} of {entries} has a password shorter than 12 characters "
        "(its value is not shown)"
    )
    assert caught.value.exit_code == 2
    password = value.split(",")[number - 1].partition(":")[2]
    assert password not in str(caught.value)


def test_a_password_of_12_characters_is_enough() -> None:
    assert basic_auth_entries("ops:twelve-chars") == ("ops:twelve-chars",)
    assert len("twelve-chars") == MIN_PASSWORD_CHARS == 12


def test_without_auth_flower_is_refused_naming_orch_flower_auth() -> None:
    with pytest.raises(ConfigInvalid, match="ORCH_FLOWER_AUTH") as caught:
        resolve_flower_auth(settings(), ("--port=5555",), {})
    assert str(caught.value) == MISSING_AUTH


def test_the_opt_out_allows_no_auth_with_a_warning() -> None:
    assert resolve_flower_auth(settings(flower_allow_no_auth=True), (), {}) == FlowerAuth(warning=NO_AUTH_WARNING)


def test_configured_auth_wins_over_the_opt_out() -> None:
    auth = resolve_flower_auth(settings(flower_auth="ops:ops-pass-0001", flower_allow_no_auth=True), (), {})
    assert auth == FlowerAuth(basic_auth=("ops:ops-pass-0001",))


@pytest.mark.parametrize(
    ("args", "environ"),
    [(("--basic-auth=ops:pw",), {}), (("--auth=.*@example.com",), {}), ((), {"FLOWER_BASIC_AUTH": "ops:pw"})],
)
def test_flowers_own_auth_options_count_as_auth(args: tuple[str, ...], environ: dict[str, str]) -> None:
    assert resolve_flower_auth(settings(), args, environ) == FlowerAuth()
