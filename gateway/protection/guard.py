"""Who may send a request and how much: API keys, tenants' routes, rate limits, request limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import LimitsConfig
from gateway.errors import ArmOverrideForbidden, InvalidRequest, TurnoutError, Unauthorized
from gateway.protection.auth import Admin, AdminKeyring, Caller, TenantKeyring, authorize
from gateway.protection.ratelimit import RateLimiter, TenantLimits, TokenCharge, estimate_tokens
from gateway.rollouts.model import Arm
from gateway.routing.table import RouteEntry, RoutingTable

ANONYMOUS = "anonymous"  # the one tenant when authentication is off


@dataclass(frozen=True, slots=True)
class AdmissionRequest:
    """What the guard looks at: the parsed request, its endpoint and its credentials."""

    path: str
    fields: dict[str, Any]
    authorization: str | None
    arm_asked: str | None = None  # the x-turnout-arm header, if sent


@dataclass(frozen=True, slots=True)
class Admission:
    """A request let in: everything the handler needs from here on, in one value."""

    caller: Caller | None  # None when authentication is off
    entry: RouteEntry  # the route it asked for, with its versions, contract and surface
    charge: TokenCharge | None  # what the tenant's budget was charged up front
    forced_arm: Arm | None = None  # the arm an admin chose with x-turnout-arm


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
        self, caller: Caller | None, request: AdmissionRequest, table: RoutingTable
    ) -> Admission:
        """One step from a parsed request to a request let in, in the order the client learns
        its mistakes: 403 for a route its tenant is not granted (before the route is looked up,
        so a tenant cannot probe which routes exist), 404 for no such route, 400 for a field or
        value the route's surface refuses or past the request limits, 403 for an arm override
        without an admin key, then 429 past the tenant's budget (charged last, so a refused
        request costs nothing). Settle the charge with `settle` once the answer is known."""
        fields = request.fields
        self.authorize(caller, fields["model"])
        entry = table.entry(fields["model"])
        entry.requests.check(request.path, fields)
        self._check_limits(fields, entry.stable.max_tokens)
        forced_arm = self._forced_arm(request)
        tenant = caller.tenant.name if caller is not None else ANONYMOUS
        limits = (caller.tenant.limits if caller is not None else None) or self._default
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            return Admission(caller, entry, None, forced_arm)
        estimate = estimate_tokens(fields, self._limits.default_max_tokens)
        charge = await self._limiter.acquire(tenant, limits, estimate)
        return Admission(caller, entry, charge, forced_arm)

    def _check_limits(self, fields: dict[str, Any], ceiling: int | None) -> None:
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

    def _forced_arm(self, request: AdmissionRequest) -> Arm | None:
        """The arm an admin forces with x-turnout-arm (other values are ignored)."""
        if request.arm_asked not in ("stable", "candidate"):
            return None
        if not self.is_admin(request.authorization):
            raise ArmOverrideForbidden(
                "Only an admin key may choose the arm with x-turnout-arm.", param="x-turnout-arm"
            )
        return "stable" if request.arm_asked == "stable" else "candidate"

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        if admission.charge is not None:
            await self._limiter.settle(admission.charge, used_tokens)
