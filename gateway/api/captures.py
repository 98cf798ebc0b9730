"""`DELETE /admin/tenants/{tenant}/captures`: delete every capture and feedback row of a tenant.

Mounted inside the admin router, so only admin keys reach it. The deletion goes through the
capture writer's queue (nothing of the tenant queued before it survives), writes an audit
record into the capture file, and answers with the counts and the datasets built earlier
that hold the tenant's data (the operator rebuilds those).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from adapters.names import NAME_PATTERN
from training.capture import CaptureSink, CaptureUnavailable
from training.capture_store import TenantDeletion

# A deletion waits behind at most the queue's records; past this the capture file is stuck.
DELETION_TIMEOUT_S = 60.0


def captures_router(sink: CaptureSink) -> APIRouter:
    """Routes to include in the admin router (which checks the admin key). With several
    workers writing the capture file, the tenant's records other workers still held in memory
    when the deletion ran are not written after it (the sink drops records a deletion of their
    tenant came after)."""
    router = APIRouter()

    async def deleted(tenant: str, actor: str) -> TenantDeletion:
        deletion = sink.delete_tenant(tenant, actor)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(deletion), DELETION_TIMEOUT_S)
        except TimeoutError:
            raise CaptureUnavailable("The deletion did not finish in time; retry.") from None

    async def delete_tenant(
        tenant: Annotated[str, Path(pattern=NAME_PATTERN)], request: Request
    ) -> dict[str, Any]:
        actor = getattr(request.state, "actor", "admin")
        deletion = await deleted(tenant, actor)
        return {"object": "turnout.tenant_deletion", **deletion.as_dict()}

    router.add_api_route(
        "/tenants/{tenant}/captures",
        delete_tenant,
        methods=["DELETE"],
        summary="Delete a tenant's captures and feedback",
    )
    return router
