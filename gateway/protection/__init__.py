"""Who may call and how much: API keys and tenants (`auth`), the admission of a caller to a
route with its limits and arm-override right (`guard`), and per-tenant request and token rate
limits (`ratelimit`). Runs before routing. Imports `gateway.config`, `gateway.errors`, adapter
names and the capture store (tenant-bound data); never the upstream or the API.
"""
