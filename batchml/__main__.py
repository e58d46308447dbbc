import sys

from batchml.cli import main

sys.exit(main())
