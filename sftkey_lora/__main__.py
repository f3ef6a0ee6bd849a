"""`python -m sftkey_lora` works like the `sftkey-lora` console script."""

import sys

from .cli import main

sys.exit(main())
