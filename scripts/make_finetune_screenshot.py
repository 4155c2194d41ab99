"""Picture of the viewer's Fine-tune section after a short round, for docs/images/finetune_panel.png.

    xvfb-run -a python scripts/make_finetune_screenshot.py docs/images/finetune_panel.png [DISTIL.png]

Opens the abdomen CT sample with the built-in model, puts the phantom's true labels of 12 planes in
as "committed" objects (a stand-in for a user's corrections), runs a 20-step decoder round into a
temporary project folder and saves the docked section as a PNG. With a second path it then runs a
short distillation (a few steps of each stage, ``nano`` student, for the picture only) from the
Distil action and saves the section again once the student is in the model list.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def _wait_while(busy, seconds: float) -> None:
    """Process Qt events while ``busy()`` (at most ``seconds``), then one more second for the UI to settle."""
    from qtpy.QtWidgets import QApplication

    deadline = time.time() + seconds
    while busy() and time.time() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.05)


def main(out: str, distil_out: str | None = None) -> int:
    import napari_vfmseg.engine  # noqa: F401  (torch before OpenGL: see annotation._gl_compat)
    import napari
    import numpy as np

    from napari_vfmseg.cli.demo import _populate
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.models import load_model
    from napari_vfmseg.widgets.annotator import AnnotatorWidget

    viewer = napari.Viewer(show=False)
    viewer.window.resize(1500, 1100)
    _populate(viewer, "abdomen_ct")
    truth = np.asarray(viewer.layers["abdomen_ct ground truth"].data)
    widget = AnnotatorWidget(viewer, autoload=False)
    viewer.window.add_dock_widget(widget, name="Segment (VFM)", area="right")
    widget.set_image_layer(viewer.layers["abdomen_ct"])
    widget.use_segmenter(Segmenter(load_model("builtin", device="cpu")))
    labels = np.zeros_like(truth)
    planes = list(range(8, 44, 3))
    labels[planes] = truth[planes]
    widget.session.set_labels(labels)
    panel = widget.finetune_panel
    panel.set_project(tempfile.mkdtemp(prefix="vfmseg-finetune-"))
    panel.steps_spin.setValue(20)
    panel.refresh()
    if not panel.start():
        print("the round did not start:", panel.unavailable_reason(), file=sys.stderr)
        return 1
    _wait_while(lambda: panel.running, 600)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    panel.parentWidget().grab().save(out)
    if distil_out:
        from napari_vfmseg.training.distill import DistillConfig

        action = panel.distil
        action.config = DistillConfig(embed_steps=12, mask_steps=6, label_steps=4, batch=4, mask_batch=2,
                                      max_transfer_images=48, checkpoint_every=0)
        action.size_combo.setCurrentIndex(action.size_combo.findData("nano"))
        action.timing_repeats = 2
        action.start()
        _wait_while(lambda: action.running, 900)
        action.grab().save(distil_out)   # the Distil section, the student listed
        print(distil_out)
    widget.shutdown()
    viewer.close()
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "finetune_panel.png",
                          sys.argv[2] if len(sys.argv) > 2 else None))
