"""What a request may carry: the allowlist of OpenAI fields per endpoint (`fields`), the
bounds a route sets on them (`config`), and the check that refuses anything else with a 400
naming the parameter (`check`). Runs right after the body is parsed. Imports only
`gateway.errors`; the config and the request path import it.
"""
