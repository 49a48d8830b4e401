"""``python -m paramgraph``: the one ``paramgraph`` command line (see :mod:`paramgraph.tasks.cli`).

The command line is the outermost shell over all three layers, so this entry point reaches up into
``paramgraph.tasks``; nothing else in ``paramgraph`` does.
"""

from paramgraph.tasks.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
