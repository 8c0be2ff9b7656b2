"""``python -m posttrain.collect sample|serve|export ...``: see ``posttrain.collect.command``."""

import sys

from posttrain.collect.command import main

sys.exit(main())
