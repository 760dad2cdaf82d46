"""``python -m lazyedit.service [serve flags]``."""

from .cli import serve_main

raise SystemExit(serve_main())
