import sys

from meta_train.cli import main

sys.exit(main())
