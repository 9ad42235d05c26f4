"""Namespaces, NAT routers, a relay and a WAN-like proxy: ``p2pfed bench nat``, ``tests/netns``."""
