"""`turnout bench ...`: benchmarks that start real processes (stub upstreams, gateways, vLLM,
Redis) and print JSON. Entry points: may import anything but the model stack.
"""
