import sys

from torchrec_din.cli import main

sys.exit(main())
