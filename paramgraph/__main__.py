"""``python -m paramgraph``: the ``paramgraph`` command line (see :mod:`paramgraph.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
