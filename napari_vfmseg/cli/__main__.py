import sys

from napari_vfmseg.cli import main

sys.exit(main())
