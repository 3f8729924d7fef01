"""`python -m rose_hf.cli` and `accelerate launch -m rose_hf.cli` run `rose-hf`."""

from . import main

raise SystemExit(main())
