"""`python -m seglab` is the `seglab` command (torchrun starts it as `-m seglab`)."""
import sys

from seglab.cli import main

sys.exit(main())
