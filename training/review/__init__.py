"""The review queue: which captured answers people should look at, and what they judged.

Owns the queue's tables inside the capture file (`schema.py`), the per-route sampling policy
(`policy.py`), the queue's reads and writes (`store.py`) and the statistics of judgements
(`stats.py`). Imports only `training.capture_store` and the standard library, so the gateway
process, the capture writer and `turnout dataset build` may all import it.
"""
