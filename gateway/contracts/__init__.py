"""Output contracts: checked JSON Schemas and verdicts on answers (`contract`), how a request's
own `response_format` meets its route's schema (`request_schemas`), and the enforcement
around the proxy: guided decoding, validation, retries, stream verdicts (`enforcement`).
`contract` and `request_schemas` are models the config imports; `enforcement` sits on the
request path above `gateway.upstream`, which it calls.
"""
