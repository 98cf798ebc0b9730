"""Turnout's gateway: an OpenAI-compatible front door that sends each request to the adapter
version its route names, on a shared vLLM base model.

A request's way through the folders, top to bottom (each folder's `__init__` says what it owns
and may import; `make lint` enforces the order with import-linter, pyproject.toml):

- `serving/`: the process: uvicorn, the listeners, start-up, and `app` (create_app), which
  assembles every part below into the ASGI app.
- `api/`: the HTTP edge: OpenAI endpoints (`openai`), admin, ops, feedback, and the one place
  where errors become statuses (`api/errors.py`).
- `surface/`: what a request may carry (allowlist and bounds), checked right after parsing.
- `protection/`: who the caller is, what they may call, how much (keys, rate limits).
- `routing/`: route -> adapter version and arm (the routing table requests read).
- `contracts/`: output contracts: guided decoding, validation, retries.
- `upstream/`: the way to vLLM: backend choice, admission, breakers, the HTTP/1.1 pool, relay.
- `placement/`: which backend holds which adapter version (demand placement), below upstream.
- `outcomes/`: after the answer: metrics, signals, rollout tallies, capture.

Beside the path: `shadow/` copies a share of a route's requests to its candidate and compares
the answers, `review/` is the human review console (admin listener),
`control/` publishes new routing tables (config changes, rollouts),
`rollouts/` steps and judges versions over time, `cli/` and `bench/` are entry points.
At the bottom, importable from every package: `errors` (no HTTP in it), `config`,
`config_paths`, `config_yaml` (reading YAML files), `gc_pause` and `environment` (the one
reader of environment variables).
"""
