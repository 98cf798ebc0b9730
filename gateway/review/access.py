"""Who may use the review console: operators (admin keys) and reviewers (reviewer keys).

Reviewer keys live in the admin keys file under `reviewers`; no other part of the gateway
accepts them, so a reviewer can judge answers and do nothing else. Tenants' keys are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.errors import AdminKeyMissing, AdminKeyRejected, TurnoutError
from gateway.protection.auth import AdminKeyring, bearer_token


@dataclass(frozen=True)
class Reviewer:
    """Someone allowed to review: an operator or a reviewer, by the name their key is filed
    under (never the key)."""

    role: Literal["admin", "reviewer"]
    name: str
    key_id: str

    @property
    def label(self) -> str:
        """Who judged, as provenance records it: `reviewer:NAME` or `admin:NAME`."""
        return f"{self.role}:{self.name}"


class ReviewAccess:
    """Decides whether an `Authorization` header may use the review API."""

    def __init__(self, admins: AdminKeyring | None, reviewers: AdminKeyring | None) -> None:
        self._keyrings: tuple[tuple[Literal["admin", "reviewer"], AdminKeyring | None], ...] = (
            ("reviewer", reviewers),
            ("admin", admins),
        )

    def authenticate(self, authorization: str | None) -> Reviewer:
        """The reviewer behind a header: 401 without a key, 403 for any other key."""
        try:
            bearer_token(authorization)
        except TurnoutError:
            raise AdminKeyMissing(
                "The review API needs `Authorization: Bearer KEY` with a reviewer or admin key."
            ) from None
        for role, keyring in self._keyrings:
            if keyring is None:
                continue
            try:
                found = keyring.authenticate(authorization)
            except TurnoutError:
                continue
            return Reviewer(role, found.name, found.key_id)
        raise AdminKeyRejected("This key may not use the review console.")
