"""One module per top-level sub-command; see ``p2pfed.cli`` for the contract."""
