"""``python -m iwae_tutorial train|evaluate|reproduce ...`` (see :mod:`iwae_tutorial.cli`)."""

from .cli import main

raise SystemExit(main())
