"""End-to-end benchmark against the peers; the same as `radar bench` (see --help)."""
import sys

from radar_ext.commands.bench import main

if __name__ == "__main__":
    sys.exit(main())
