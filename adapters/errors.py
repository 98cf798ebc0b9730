"""The adapter registry's errors, each naming the check or the version it is about."""

from __future__ import annotations

from gateway.errors import TurnoutError


class AdapterError(TurnoutError):
    """Base of the registry's errors."""

    status = 400
    error_type = "invalid_request_error"
    code = "adapter_error"


class AdapterRefused(AdapterError):
    """An adapter failed a validation check; `check` names which."""

    code = "adapter_refused"

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"refused ({check}): {message}")
        self.check = check


class AdapterNotFound(AdapterError):
    """No such adapter version in the store."""

    status = 404
    code = "adapter_not_found"


class AdapterStoreUnreadable(AdapterError):
    """The store could not be read (permissions, network): nothing is known about the version."""

    status = 503
    error_type = "server_error"
    code = "adapter_store_unreadable"


class AdapterExists(AdapterError):
    """The version is already in the store; versions are immutable."""

    status = 409
    code = "adapter_exists"


class AdapterInUse(AdapterError):
    """A route still references the version."""

    status = 409
    code = "adapter_in_use"


class AdapterLoadFailed(AdapterError):
    """A backend refused to load a version."""

    status = 502
    error_type = "upstream_error"
    code = "adapter_load_failed"
