"""Example scenarios shipped with p2pfed (TOML files; ``p2pfed sim list`` shows them)."""
