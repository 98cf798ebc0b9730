"""The way to vLLM and back: the `UpstreamClient` interface and the backend pool with health
and breakers (`backends`, `health`, `breaker`), Turnout's HTTP/1.1 connection pool
(`http1_pool`), which versions each backend holds (`residency`), per-backend admission
(bounded concurrency and queue), the proxy that sends a request and relays the answer or
stream, and the adapter loader. Imports routing's types, the config, `adapters` and
`monitoring`; never contracts, the API or serving.
"""
