"""Which adapter version answers: the immutable routing table from a client's `model` to its
versions, arm choice (sticky per caller) and contract (`table`). The control plane builds a
new table for every change and swaps it in one step; requests only read it. Imports the
config and the models it is built from (contracts, rollouts, surface); upstream, contracts'
enforcement and the API import it.
"""
