"""python -m smallmind_torch.cli"""
import sys

from . import main

sys.exit(main())
