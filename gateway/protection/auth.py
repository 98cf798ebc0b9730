"""API keys: who is calling (tenant or admin, by a hashed key) and which routes they may call.

Keys are random `tk-` tokens shown once by `turnout keys create`; files hold only their
sha256. A presented key is hashed, looked up by hash, and compared with `hmac.compare_digest`.
No object here keeps a plain key, and no error or log line repeats one.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, Field, ValidationError

from adapters.names import NAME_PATTERN
from gateway.config import RouteName, StrictModel, describe_validation_error
from gateway.errors import ConfigError, Forbidden, Unauthorized
from gateway.protection.ratelimit import TenantLimits
from training.capture_store import TrainingUse

API_KEY_PREFIX = "tk-"
ALL_ROUTES = "*"
_KEY_ID_CONTEXT = b"turnout key id\x00"


def new_api_key() -> str:
    """A fresh key: `tk-` and 256 random bits, URL-safe."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The sha256 hex digest that key files store."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key_hash: str) -> str:
    """A short, stable, non-reversible id of a key: for sticky assignment and logs."""
    return hashlib.sha256(_KEY_ID_CONTEXT + key_hash.encode()).hexdigest()[:12]


def _sha256_hex(value: str) -> str:
    # The message never includes the value: it may be a plain key pasted by mistake.
    if value.startswith(API_KEY_PREFIX):
        raise ValueError(
            "looks like a plain API key; store its sha256 instead (`turnout keys create` prints it)"
        )
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("must be a sha256 digest: 64 lowercase hex characters")
    return value


def _route_or_all(value: str) -> str:
    if value != ALL_ROUTES and not re.fullmatch(NAME_PATTERN, value):
        raise ValueError(f"{value!r} is neither a route name nor `*`")
    return value


KeyHash = Annotated[str, AfterValidator(_sha256_hex)]
GrantedRoute = Annotated[str, AfterValidator(_route_or_all)]


class KeyEntry(StrictModel):
    """One key of a keys file: its hash and a label for people."""

    sha256: KeyHash = Field(repr=False)
    label: str = ""


class LimitsEntry(StrictModel):
    """A tenant's budget; omit a field for no limit of that kind."""

    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)


class TenantEntry(StrictModel):
    """One tenant: the routes it may call (`*` for all), its keys and its limits."""

    routes: list[GrantedRoute] = Field(min_length=1)
    keys: list[KeyEntry] = Field(default_factory=list)
    limits: LimitsEntry | None = None
    training: TrainingUse | None = Field(
        default=None, description="may its captured traffic train adapters; None: the file's"
    )


class TenantKeysFile(StrictModel):
    """`auth.keys_file`: tenants by name, and the training policy of those that set none."""

    training: TrainingUse = Field(
        default="allow", description="the default of tenants without a `training` of their own"
    )
    tenants: dict[RouteName, TenantEntry]


class AdminKeysFile(StrictModel):
    """`auth.admin_keys_file`: operators' keys for the admin API, apart from tenants' keys;
    reviewers' keys open the review console and nothing else."""

    admins: dict[RouteName, list[KeyEntry]]
    reviewers: dict[RouteName, list[KeyEntry]] = Field(default_factory=dict)


_File = TypeVar("_File", TenantKeysFile, AdminKeysFile)


@dataclass(frozen=True)
class Tenant:
    """A tenant as the request path sees it."""

    name: str
    routes: frozenset[str]
    limits: TenantLimits | None = None
    training: TrainingUse = "allow"  # `deny`: captured, never in a dataset

    def may_call(self, route: str) -> bool:
        return ALL_ROUTES in self.routes or route in self.routes


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the tenant and the id (not the key) of the key used."""

    tenant: Tenant
    key_id: str


@dataclass(frozen=True)
class Admin:
    """An operator authenticated for the admin API."""

    name: str
    key_id: str


@dataclass(frozen=True)
class IssuedKey:
    """A key just made: the plain key (shown once) and the hash files store, both unprinted."""

    key: str = field(repr=False)
    sha256: str = field(repr=False)
    key_id: str

    def __str__(self) -> str:
        return f"IssuedKey(key_id={self.key_id})"


def issue_key() -> IssuedKey:
    key = new_api_key()
    key_hash = hash_api_key(key)
    return IssuedKey(key=key, sha256=key_hash, key_id=key_id_of(key_hash))


def bearer_token(authorization: str | None) -> str:
    """The key of an `Authorization: Bearer <key>` header; Unauthorized if there is none."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "No API key provided. Send it as `Authorization: Bearer <key>`; "
            "an operator creates keys with `turnout keys create`."
        )
    return token


@dataclass(frozen=True)
class _StoredKey:
    owner: str
    sha256: str = field(repr=False)


def _match(stored: Mapping[str, _StoredKey], authorization: str | None) -> _StoredKey:
    """The stored key the presented one hashes to; Unauthorized when there is none."""
    presented = hash_api_key(bearer_token(authorization))
    # The lookup finds the candidate by hash; the constant-time compare is what decides.
    candidate = stored.get(presented)
    if candidate is None or not hmac.compare_digest(candidate.sha256, presented):
        raise Unauthorized("Incorrect API key provided.")
    return candidate


class TenantKeyring:
    """Tenants and their key hashes, immutable; built from a keys file."""

    def __init__(self, tenants: Mapping[str, Tenant], keys: Mapping[str, _StoredKey]) -> None:
        self._tenants = dict(tenants)
        self._keys = dict(keys)

    def __repr__(self) -> str:
        return f"TenantKeyring(tenants={sorted(self._tenants)}, keys={len(self._keys)})"

    @property
    def tenants(self) -> Mapping[str, Tenant]:
        return self._tenants

    def training_denied(self) -> frozenset[str]:
        """The tenants whose traffic may not train adapters."""
        return frozenset(name for name, t in self._tenants.items() if t.training == "deny")

    def authenticate(self, authorization: str | None) -> Caller:
        """The caller of an `Authorization` header; Unauthorized (401) for no or wrong key."""
        key = _match(self._keys, authorization)
        return Caller(tenant=self._tenants[key.owner], key_id=key_id_of(key.sha256))


def authorize(tenant: Tenant, route: str) -> None:
    """Forbidden (403) unless the tenant is granted `route`."""
    if not tenant.may_call(route):
        raise Forbidden(f"This API key may not call the model `{route}`.", param="model")


class AdminKeyring:
    """Operators' key hashes; separate from tenants so that no tenant key opens the admin API."""

    def __init__(self, keys: Mapping[str, _StoredKey]) -> None:
        self._keys = dict(keys)

    def __repr__(self) -> str:
        return f"AdminKeyring(admins={sorted({key.owner for key in self._keys.values()})})"

    def authenticate(self, authorization: str | None) -> Admin:
        """The operator of an `Authorization` header; Unauthorized (401) for no or wrong key."""
        key = _match(self._keys, authorization)
        return Admin(name=key.owner, key_id=key_id_of(key.sha256))


def _stored_keys(entries: Mapping[str, list[KeyEntry]], source: str) -> dict[str, _StoredKey]:
    stored: dict[str, _StoredKey] = {}
    for owner, keys in entries.items():
        for number, key in enumerate(keys):
            if key.sha256 in stored:
                raise ConfigError(
                    f"{source}.{owner}.keys.{number}: this key hash is already listed"
                    f" (under {stored[key.sha256].owner})"
                )
            stored[key.sha256] = _StoredKey(owner=owner, sha256=key.sha256)
    return stored


def _validate_routes(name: str, routes: list[str], source: str) -> frozenset[str]:
    if ALL_ROUTES in routes and len(routes) > 1:
        raise ConfigError(f"{source}: tenants.{name}.routes: `*` grants every route; list it alone")
    return frozenset(routes)


def build_tenant_keyring(keys_file: TenantKeysFile, source: str = "keys") -> TenantKeyring:
    tenants = {}
    for name, entry in keys_file.tenants.items():
        limits = entry.limits
        tenants[name] = Tenant(
            name=name,
            routes=_validate_routes(name, entry.routes, source),
            limits=(
                TenantLimits(limits.requests_per_minute, limits.tokens_per_minute)
                if limits is not None
                else None
            ),
            training=entry.training or keys_file.training,
        )
    keys = _stored_keys(
        {name: entry.keys for name, entry in keys_file.tenants.items()}, f"{source}: tenants"
    )
    return TenantKeyring(tenants, keys)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None


def _validate(model: type[_File], raw: Any, source: str) -> _File:
    try:
        return model.model_validate(raw if raw is not None else {})
    except ValidationError as error:
        raise ConfigError(f"{source}:\n{describe_validation_error(error)}") from None


def load_tenant_keyring(path: Path) -> TenantKeyring:
    """Read a tenants keys file; ConfigError naming the key for anything wrong in it."""
    keys_file = _validate(TenantKeysFile, _read_yaml(path), str(path))
    return build_tenant_keyring(keys_file, str(path))


def load_admin_keyring(path: Path) -> AdminKeyring:
    """Read an admin keys file; ConfigError naming the key for anything wrong in it."""
    keys_file = _validate(AdminKeysFile, _read_yaml(path), str(path))
    return AdminKeyring(_stored_keys(keys_file.admins, f"{path}: admins"))


def load_reviewer_keyring(path: Path) -> AdminKeyring:
    """The `reviewers` of an admin keys file: keys for the review console alone."""
    keys_file = _validate(AdminKeysFile, _read_yaml(path), str(path))
    return AdminKeyring(_stored_keys(keys_file.reviewers, f"{path}: reviewers"))


def cmd_keys_create(args: argparse.Namespace) -> int:
    issued = issue_key()
    print(f"API key (shown once; give it to the {args.owner!r} client): {issued.key}")
    print(f"Key id: {issued.key_id}")
    section = "reviewers" if args.reviewer else "admins" if args.admin else "tenants"
    if args.reviewer:
        print(f"Add to the admin keys file, under reviewers, as {args.owner!r}:")
    else:
        print(f"Add to the {section} file under {args.owner!r}:")
    entry = {"sha256": issued.sha256, "label": args.label}
    listed = args.admin or args.reviewer
    snippet = {args.owner: [entry]} if listed else {args.owner: {"keys": [entry]}}
    print(yaml.safe_dump({section: snippet}, sort_keys=False), end="")
    return 0


def add_commands(subparsers: Any) -> None:
    """Register `turnout keys create` on the top-level subcommands."""
    keys = subparsers.add_parser("keys", help="create API keys (only their hashes are stored)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="print a new key and the line to store")
    create.add_argument("owner", help="the tenant (or, with --admin, the operator) it belongs to")
    create.add_argument("--label", default="", help="a note for people, e.g. `ci` or `alice`")
    create.add_argument("--admin", action="store_true", help="a key for the admin API")
    create.add_argument(
        "--reviewer", action="store_true", help="a key for the review console alone"
    )
    create.set_defaults(run=cmd_keys_create)
