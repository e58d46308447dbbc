"""The monitoring dashboard, for ``panel serve``:

    panel serve dashboards/monitor.py --args --root s3://bucket/batchml

(or set BATCHML_ROOT / BATCHML_STORAGE_OPTIONS). ``batchml dashboard`` serves the same app.
"""

import sys

from batchml.cli import open_store, store_arguments
from batchml.serve.dashboard import create_app

args, _ = store_arguments().parse_known_args(sys.argv[1:])
create_app(open_store(args)).servable()
