"""Broker-side request logic as a library: topic configs, consumer offsets, send and pull handling.

Nothing here runs a loop or owns a socket: `workers/front.py` wires these pieces to the ROUTER
socket and the shared-memory rings, and tests drive them directly.
"""
