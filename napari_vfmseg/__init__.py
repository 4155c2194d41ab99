"""napari-vfmseg: interactive segmentation of medical images with adapted Segment Anything models.

The core (``io``, ``models``, ``engine``, ``training``) imports without Qt or napari; the napari
plugin lives in ``widgets`` and the thin ``_reader``/``_writer``/``_sample_data`` modules.
"""

__version__ = "0.1.0"
