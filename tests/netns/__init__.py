"""Network-namespace scenarios: hospitals behind NAT routers, a public relay (root only)."""
