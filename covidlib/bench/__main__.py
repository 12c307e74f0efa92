"""``python -m covidlib.bench``: see :mod:`covidlib.bench.run`."""

from covidlib.bench.run import main

raise SystemExit(main())
