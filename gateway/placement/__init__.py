"""Adapter placement across a fleet of vLLM backends: which backend holds which version.

Owns the fleet view (resident versions per backend, in-flight requests, use statistics), the
policy over it (where a version is loaded, when it is replicated, which version is evicted)
and the single-flight loading of versions with a bounded wait. Pure logic in `fleet.py`;
`loads.py` adds the asynchronous coordination, with the backend calls injected; `warm.py` reads
which versions a routing table keeps warm; `shared.py` coordinates several replicas through
Redis (backend leases, what each backend holds, versions in use). Sits below
`gateway.upstream`, which asks it where a version is: may import `gateway.errors`,
`gateway.config`, the routing table, `monitoring` and the Redis client. Its wiring onto the
adapter loader is `gateway.upstream.demand_placement`, its command `gateway.cli.placement`.
"""
