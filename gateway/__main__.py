"""python -m gateway: the same as the vllm-gateway console script."""

import sys

from gateway.cli import main

sys.exit(main())
