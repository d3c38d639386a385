import sys

from eval.scaling.cli import main

sys.exit(main())
