import sys

from moodle_bridge.cli import main

sys.exit(main())
