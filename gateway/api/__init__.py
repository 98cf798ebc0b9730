"""The HTTP edge: the OpenAI-compatible endpoints (`openai`, with `protocol` for the typed
request models), admin, ops (`/healthz`, `/readyz`), fleet, feedback and captures endpoints, the
slow-client cut for streams (`stream_guard`), and `errors`, the one place where an error's
`Failure` becomes an HTTP status. Imports the families below (control, outcomes, contracts,
upstream, protection, routing, rollouts); only `gateway.serving` imports it.
"""
