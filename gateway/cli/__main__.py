"""`python -m gateway.cli`: the `turnout` command."""

from gateway.cli.main import main

raise SystemExit(main())
