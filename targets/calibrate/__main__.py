"""python -m hwopt.targets.calibrate ..."""
import sys

from .cli import main

sys.exit(main())
