"""``python -m litelvlm_kernels.flops``: the command of ``cli.py`` (a parser over ``flops`` and ``memory``)."""

from .cli import main

raise SystemExit(main())
