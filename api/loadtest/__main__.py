"""``python -m api.loadtest --url … --callers N …``: the ``vivavoce loadtest`` command."""

from api.loadtest.cli import main

raise SystemExit(main())
