import sys

from mixdaemon.cli.main import main

sys.exit(main())
