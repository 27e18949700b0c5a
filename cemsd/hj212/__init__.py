"""HJ 212-2017 uplink: packets (packet.py), the protocol's numbers (protocol.py), the
`[[hj212]]` configuration (config.py), CP contents from stored periods (messages.py),
cursors and period queries (store.py) and one daemon component per platform (uplink.py).
"""
