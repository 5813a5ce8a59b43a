import sys

from volumemanager.cli import main

sys.exit(main())
