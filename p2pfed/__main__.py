"""Allow ``python -m p2pfed``."""

from p2pfed.cli import main

raise SystemExit(main())
