"""Who may send a request and how much: API keys, tenants' routes, rate limits, request limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.auth import Admin, AdminKeyring, Caller, TenantKeyring, authorize
from gateway.config import LimitsConfig
from gateway.errors import InvalidRequest, TurnoutError, Unauthorized
from gateway.ratelimit import RateLimiter, TenantLimits, TokenCharge, estimate_tokens

ANONYMOUS = "anonymous"  # the one tenant when authentication is off


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request that passed the guard: its caller (None without auth) and its token charge."""

    caller: Caller | None
    charge: TokenCharge | None


class RequestGuard:
    """Checks a parsed request before it may cost anything upstream."""

    def __init__(
        self,
        tenants: TenantKeyring | None,
        admins: AdminKeyring | None,
        limiter: RateLimiter,
        limits: LimitsConfig,
    ) -> None:
        self._tenants = tenants
        self._admins = admins
        self._limiter = limiter
        self._limits = limits
        self._default = TenantLimits(limits.requests_per_minute, limits.tokens_per_minute)

    def caller(self, authorization: str | None) -> Caller | None:
        """The caller of a request (401 for no or a wrong key); None when auth is off."""
        return None if self._tenants is None else self._tenants.authenticate(authorization)

    def caller_or_admin(self, authorization: str | None) -> Caller | Admin | None:
        """A tenant's caller, else an operator (admin key); None when auth is off; 401 for
        anyone else."""
        if self._tenants is None:
            return None
        try:
            return self._tenants.authenticate(authorization)
        except Unauthorized as not_a_tenant:
            if self._admins is None:
                raise
            try:
                return self._admins.authenticate(authorization)
            except Unauthorized:
                raise not_a_tenant from None

    async def charge(self, caller: Caller | None, tokens: int) -> None:
        """Take one request and `tokens` from the tenant's budget (429 past it); for calls
        that are not inferences (feedback), so nothing is settled afterwards."""
        tenant = caller.tenant.name if caller is not None else ANONYMOUS
        limits = (caller.tenant.limits if caller is not None else None) or self._default
        if limits.requests_per_minute is not None or limits.tokens_per_minute is not None:
            await self._limiter.acquire(tenant, limits, tokens)

    def is_admin(self, authorization: str | None) -> bool:
        if self._admins is None:
            return False
        try:
            self._admins.authenticate(authorization)
        except TurnoutError:
            return False
        return True

    def may_list(self, caller: Caller | None, route: str) -> bool:
        return caller is None or caller.tenant.may_call(route)

    def authorize(self, caller: Caller | None, route: str) -> None:
        """403 for a route the caller's tenant is not granted (before the route is looked up,
        so a tenant cannot probe which routes exist)."""
        if caller is not None:
            authorize(caller.tenant, route)

    async def admit(
        self, caller: Caller | None, fields: dict[str, Any], ceiling: int | None
    ) -> Admitted:
        """400 past the request limits, 429 past the tenant's budget; the charge must be
        settled with `settle` once the answer is known."""
        messages = fields.get("messages")
        if isinstance(messages, list) and len(messages) > self._limits.max_messages:
            raise InvalidRequest(
                f"At most {self._limits.max_messages} messages per request.", param="messages"
            )
        ceiling = ceiling or self._limits.max_tokens
        for name in ("max_tokens", "max_completion_tokens"):
            asked = fields.get(name)
            if ceiling is not None and isinstance(asked, int) and asked > ceiling:
                raise InvalidRequest(
                    f"`{name}` is {asked}; this model allows at most {ceiling}.", param=name
                )
        tenant = caller.tenant.name if caller is not None else ANONYMOUS
        limits = (caller.tenant.limits if caller is not None else None) or self._default
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            return Admitted(caller, None)
        estimate = estimate_tokens(fields, self._limits.default_max_tokens)
        return Admitted(caller, await self._limiter.acquire(tenant, limits, estimate))

    async def settle(self, admitted: Admitted, used_tokens: int) -> None:
        if admitted.charge is not None:
            await self._limiter.settle(admitted.charge, used_tokens)
