"""Which listener serves `/metrics`: a metrics port of its own, the admin port, the public port.

The exposition names every route, adapter version and backend with its traffic, errors and
rollout state: one tenant's business to every other. So it goes where the operator's
Prometheus scrapes and tenants do not, and on the public port only when the operator says so,
or when there are no tenants to keep apart (no `auth.keys_file`) and no other listener to put
it on: the embedded `turnout up` / `make run` case, where anyone who reaches the port may
already use every route.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import AuthConfig, ServerConfig


@dataclass(frozen=True, slots=True)
class MetricsPlacement:
    """Where `/metrics` is mounted."""

    public: bool  # on `server.port`, with the API
    admin: bool  # on the admin API's listener, `server.admin_port`
    own_port: int | None  # `server.metrics_port`: a listener that serves only `/metrics`

    @property
    def nowhere(self) -> bool:
        return not self.public and not self.admin and self.own_port is None


def place_metrics(server: ServerConfig, auth: AuthConfig) -> MetricsPlacement:
    """`/metrics` on `metrics_port` if set, else on the admin listener if there is one; on the
    public port as `public_metrics` says, by default only with no keys and no other listener."""
    own_port = server.metrics_port
    admin = own_port is None and server.admin_port is not None
    public = server.public_metrics
    if public is None:
        public = auth.keys_file is None and own_port is None and server.admin_port is None
    return MetricsPlacement(public=public, admin=admin, own_port=own_port)
