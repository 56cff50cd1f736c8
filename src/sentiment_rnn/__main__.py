"""Allow ``python -m sentiment_rnn``."""

import sys

from sentiment_rnn.cli import main

sys.exit(main())
