"""Every environment variable Turnout reads, read here and nowhere else.

Secrets and deployment wiring arrive as environment variables (a Kubernetes Secret, a
container's env); everything else is the config file. docs/configuration.md lists them:

| variable | sets |
|---|---|
| `TURNOUT_REDIS_URL` | `state.redis_url` |
| `TURNOUT_API_KEYS_FILE` | `auth.keys_file` |
| `TURNOUT_ADMIN_KEYS_FILE` | `auth.admin_keys_file` |
| `TURNOUT_ADMIN_PORT` | `server.admin_port` |
| `TURNOUT_ADMIN_URL`, `TURNOUT_ADMIN_KEY` | the admin API that `rollout` and `flywheel` call |
| `TURNOUT_STORE` | the adapter store of `turnout adapters ...` when no config file names one |
| `TURNOUT_DEBUG` | `1`: the CLI shows tracebacks (as `--debug`) |

and the secrets whose variable the config names (`secret`): `monitoring.refusal_judge.api_key_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

REDIS_URL = "TURNOUT_REDIS_URL"
API_KEYS_FILE = "TURNOUT_API_KEYS_FILE"
ADMIN_KEYS_FILE = "TURNOUT_ADMIN_KEYS_FILE"
ADMIN_PORT = "TURNOUT_ADMIN_PORT"
ADMIN_URL = "TURNOUT_ADMIN_URL"
ADMIN_KEY = "TURNOUT_ADMIN_KEY"
STORE = "TURNOUT_STORE"
DEBUG = "TURNOUT_DEBUG"


@dataclass(frozen=True, slots=True)
class Environment:
    """The variables above as they were set (an empty value counts as unset)."""

    redis_url: str | None = None
    api_keys_file: str | None = None
    admin_keys_file: str | None = None
    admin_port: int | None = None
    admin_url: str | None = None
    admin_key: str | None = None
    store: str | None = None
    debug: bool = False

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> Environment:
        source = os.environ if env is None else env

        def value(name: str) -> str | None:
            return source.get(name) or None

        port = value(ADMIN_PORT)
        return cls(
            redis_url=value(REDIS_URL),
            api_keys_file=value(API_KEYS_FILE),
            admin_keys_file=value(ADMIN_KEYS_FILE),
            admin_port=int(port) if port else None,
            admin_url=value(ADMIN_URL),
            admin_key=value(ADMIN_KEY),
            store=value(STORE),
            debug=value(DEBUG) not in (None, "0"),
        )


def secret(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of a variable the config names for a secret (unset or empty: None)."""
    source = os.environ if env is None else env
    return source.get(name) or None
