"""Helpers the tests share; imported by tests (and by conftest fixtures), never from conftest.py
or from another test module.

- `inprocess`, `upstream`: the gateway built in-process by `create_app` over an in-memory
  upstream and driven through `httpx.ASGITransport`: the fast loop for data-plane logic.
- `store`: a synthetic adapter store with the demo adapters' names, for in-process gateways.
- `processes`, `sockets`: the gateway and the stub upstream as real processes; misbehaving TCP
  backends. For what needs a real server, socket or vLLM.
- `demo`, `rollouts`, `schemas`: configs, routes and schemas several test modules share.
- `errors`, `waiting`: the OpenAI error shape check; polling with a deadline.
"""
