import sys

from hiertrain.cli.main import main

sys.exit(main())
