"""API keys: hashed storage, 401/403 decisions, keys files, and keys that never leak."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.api.errors import error_body, http_status
from gateway.errors import ConfigError, Forbidden, Unauthorized
from gateway.protection.auth import (
    IssuedKey,
    add_commands,
    authorize,
    hash_api_key,
    issue_key,
    key_id_of,
    load_admin_keyring,
    load_tenant_keyring,
    new_api_key,
)
from gateway.protection.ratelimit import TenantLimits


def write_yaml(folder: Path, name: str, content: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(content))
    return path


@pytest.fixture
def keys() -> dict[str, IssuedKey]:
    return {"acme": issue_key(), "globex": issue_key(), "ops": issue_key()}


@pytest.fixture
def tenants_file(tmp_path: Path, keys: dict[str, IssuedKey]) -> Path:
    return write_yaml(
        tmp_path,
        "tenants.yaml",
        {
            "tenants": {
                "acme": {
                    "routes": ["support-triage", "chat"],
                    "keys": [{"sha256": keys["acme"].sha256, "label": "ci"}],
                    "limits": {"requests_per_minute": 60, "tokens_per_minute": 10000},
                },
                "globex": {"routes": ["*"], "keys": [{"sha256": keys["globex"].sha256}]},
            }
        },
    )


@pytest.fixture
def admins_file(tmp_path: Path, keys: dict[str, IssuedKey]) -> Path:
    return write_yaml(
        tmp_path, "admins.yaml", {"admins": {"alice": [{"sha256": keys["ops"].sha256}]}}
    )


def test_new_keys_are_prefixed_unique_and_high_entropy() -> None:
    made = {new_api_key() for _ in range(200)}
    assert len(made) == 200
    for key in made:
        assert key.startswith("tk-")
        assert len(key) >= 3 + 43  # 256 random bits, base64url


def test_a_valid_key_authenticates_as_its_tenant_with_its_limits(
    tenants_file: Path, keys: dict[str, IssuedKey]
) -> None:
    keyring = load_tenant_keyring(tenants_file)
    caller = keyring.authenticate(f"Bearer {keys['acme'].key}")
    assert caller.tenant.name == "acme"
    assert caller.tenant.limits == TenantLimits(60, 10000)
    assert caller.key_id == keys["acme"].key_id


def test_the_bearer_scheme_is_case_insensitive(
    tenants_file: Path, keys: dict[str, IssuedKey]
) -> None:
    keyring = load_tenant_keyring(tenants_file)
    assert keyring.authenticate(f"bearer  {keys['globex'].key} ").tenant.name == "globex"


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "tk-abc"])
def test_no_key_is_unauthorized_and_says_how_to_send_one(
    tenants_file: Path, header: str | None
) -> None:
    keyring = load_tenant_keyring(tenants_file)
    with pytest.raises(Unauthorized, match="Authorization: Bearer") as raised:
        keyring.authenticate(header)
    assert http_status(raised.value) == 401
    assert raised.value.code == "invalid_api_key"


def test_a_wrong_key_is_unauthorized_and_the_error_does_not_repeat_it(
    tenants_file: Path,
) -> None:
    keyring = load_tenant_keyring(tenants_file)
    wrong = new_api_key()
    with pytest.raises(Unauthorized) as raised:
        keyring.authenticate(f"Bearer {wrong}")
    assert wrong not in error_body(raised.value).decode()
    assert wrong not in str(raised.value)


def test_a_tenant_key_does_not_open_the_admin_api_nor_the_reverse(
    tenants_file: Path, admins_file: Path, keys: dict[str, IssuedKey]
) -> None:
    tenants = load_tenant_keyring(tenants_file)
    admins = load_admin_keyring(admins_file)
    assert admins.authenticate(f"Bearer {keys['ops'].key}").name == "alice"
    with pytest.raises(Unauthorized):
        admins.authenticate(f"Bearer {keys['acme'].key}")
    with pytest.raises(Unauthorized):
        tenants.authenticate(f"Bearer {keys['ops'].key}")


def test_a_tenant_may_call_only_its_granted_routes(
    tenants_file: Path, keys: dict[str, IssuedKey]
) -> None:
    keyring = load_tenant_keyring(tenants_file)
    acme = keyring.authenticate(f"Bearer {keys['acme'].key}").tenant
    authorize(acme, "support-triage")
    authorize(acme, "chat")
    with pytest.raises(Forbidden) as raised:
        authorize(acme, "billing")
    assert http_status(raised.value) == 403
    assert raised.value.param == "model"


def test_a_star_grant_allows_every_route(tenants_file: Path, keys: dict[str, IssuedKey]) -> None:
    globex = load_tenant_keyring(tenants_file).authenticate(f"Bearer {keys['globex'].key}")
    for route in ("support-triage", "billing", "anything-new"):
        authorize(globex.tenant, route)


def test_the_key_id_is_short_stable_and_not_the_hash() -> None:
    issued = issue_key()
    assert key_id_of(issued.sha256) == issued.key_id == key_id_of(hash_api_key(issued.key))
    assert len(issued.key_id) == 12
    assert issued.key_id not in issued.sha256
    assert issued.key_id not in issued.key


def test_no_repr_or_str_shows_a_key_or_its_hash(
    tenants_file: Path, admins_file: Path, keys: dict[str, IssuedKey]
) -> None:
    tenants = load_tenant_keyring(tenants_file)
    admins = load_admin_keyring(admins_file)
    holders: list[object] = [
        tenants,
        admins,
        tenants.authenticate(f"Bearer {keys['acme'].key}"),
        admins.authenticate(f"Bearer {keys['ops'].key}"),
        *keys.values(),
    ]
    for holder in holders:
        for text in (repr(holder), str(holder)):
            for issued in keys.values():
                assert issued.key not in text
                assert issued.sha256 not in text


def test_a_plain_key_pasted_into_the_file_is_refused_without_echoing_it(
    tmp_path: Path,
) -> None:
    plain = new_api_key()
    path = write_yaml(
        tmp_path, "bad.yaml", {"tenants": {"acme": {"routes": ["*"], "keys": [{"sha256": plain}]}}}
    )
    with pytest.raises(ConfigError) as raised:
        load_tenant_keyring(path)
    assert "tenants.acme.keys.0.sha256" in raised.value.message
    assert "plain API key" in raised.value.message
    assert plain not in raised.value.message


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ({"tenants": {"acme": {"routes": ["*"], "keys": [{"sha256": "abc"}]}}}, "sha256"),
        ({"tenants": {"acme": {"routes": []}}}, "tenants.acme.routes"),
        ({"tenants": {"acme": {"routes": ["../etc"]}}}, "tenants.acme.routes.0"),
        ({"tenants": {"acme": {"routes": ["*", "chat"]}}}, "tenants.acme.routes"),
        ({"tenants": {"acme": {"routes": ["*"], "color": "red"}}}, "tenants.acme.color"),
        ({"tenants": {"a c": {"routes": ["*"]}}}, "tenants.a c"),
        ({"tenants": {"acme": {"routes": ["*"], "limits": {"requests_per_minute": 0}}}}, "limits"),
        ({"admins": {}}, "admins"),
    ],
)
def test_keys_file_mistakes_are_config_errors_naming_the_key(
    tmp_path: Path, content: dict[str, Any], where: str
) -> None:
    path = write_yaml(tmp_path, "tenants.yaml", content)
    with pytest.raises(ConfigError, match=r"tenants\.yaml") as raised:
        load_tenant_keyring(path)
    assert where in raised.value.message


def test_the_same_key_under_two_tenants_is_refused(tmp_path: Path) -> None:
    shared = {"sha256": issue_key().sha256}
    path = write_yaml(
        tmp_path,
        "tenants.yaml",
        {
            "tenants": {
                "a": {"routes": ["*"], "keys": [shared]},
                "b": {"routes": ["*"], "keys": [shared]},
            }
        },
    )
    with pytest.raises(ConfigError, match="already listed"):
        load_tenant_keyring(path)


def test_unreadable_and_invalid_yaml_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_tenant_keyring(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("tenants: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_admin_keyring(broken)


def test_keys_create_prints_a_working_key_and_the_entry_to_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", "create", "acme", "--label", "ci"])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    key = next(word for word in printed.split() if word.startswith("tk-"))
    entry = yaml.safe_load(printed.split("under 'acme':\n", 1)[1])
    entry["tenants"]["acme"]["routes"] = ["chat"]
    path = write_yaml(tmp_path, "tenants.yaml", entry)
    caller = load_tenant_keyring(path).authenticate(f"Bearer {key}")
    assert caller.tenant.name == "acme"


def test_each_tenant_has_a_training_policy_defaulting_to_the_files(
    tmp_path: Path, keys: dict[str, IssuedKey]
) -> None:
    def tenants(default: str | None, acme: str | None) -> dict[str, Any]:
        acme_entry: dict[str, Any] = {"routes": ["*"], "keys": [{"sha256": keys["acme"].sha256}]}
        if acme is not None:
            acme_entry["training"] = acme
        content: dict[str, Any] = {
            "tenants": {"acme": acme_entry, "globex": {"routes": ["*"]}},
        }
        if default is not None:
            content["training"] = default
        return content

    cases = {
        (None, None): {"acme": "allow", "globex": "allow"},
        ("deny", None): {"acme": "deny", "globex": "deny"},
        ("deny", "allow"): {"acme": "allow", "globex": "deny"},
        (None, "deny"): {"acme": "deny", "globex": "allow"},
    }
    for (default, acme), expected in cases.items():
        keyring = load_tenant_keyring(write_yaml(tmp_path, "t.yaml", tenants(default, acme)))
        assert {name: t.training for name, t in keyring.tenants.items()} == expected
        assert keyring.training_denied() == {n for n, p in expected.items() if p == "deny"}
        caller = keyring.authenticate(f"Bearer {keys['acme'].key}")
        assert caller.tenant.training == expected["acme"]
    with pytest.raises(ConfigError, match="training"):
        load_tenant_keyring(write_yaml(tmp_path, "t.yaml", tenants(None, "sometimes")))
