"""The adapter registry's errors, each naming the check or the version it is about."""

from __future__ import annotations

from gateway.errors import Failure, TurnoutError


class AdapterError(TurnoutError):
    """Base of the registry's errors."""

    failure = Failure.INVALID
    code = "adapter_error"


class AdapterRefused(AdapterError):
    """An adapter failed a validation check; `check` names which."""

    code = "adapter_refused"

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"refused ({check}): {message}")
        self.check = check


class AdapterNotFound(AdapterError):
    """No such adapter version in the store."""

    failure = Failure.NOT_FOUND
    code = "adapter_not_found"


class AdapterStoreUnreadable(AdapterError):
    """The store could not be read (permissions, network): nothing is known about the version."""

    failure = Failure.UNAVAILABLE
    code = "adapter_store_unreadable"


class AdapterExists(AdapterError):
    """The version is already in the store; versions are immutable."""

    failure = Failure.CONFLICT
    code = "adapter_exists"


class AdapterInUse(AdapterError):
    """A route still references the version."""

    failure = Failure.CONFLICT
    code = "adapter_in_use"


class AdapterLoadFailed(AdapterError):
    """A backend refused to load a version."""

    failure = Failure.UPSTREAM_FAILED
    code = "adapter_load_failed"
