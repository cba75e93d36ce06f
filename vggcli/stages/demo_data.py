"""The demo-data stage: the embedded tiny ILSVRC-layout dataset, drawn with a progress bar
(a plain folder, not a run: it stands in for the user's ImageNet copy)."""

from __future__ import annotations

from pathlib import Path

from vggcli.data.scenes import SceneSettings
from vggcli.data.synthetic import SyntheticSpec, generate
from vggcli.progress import progress_bar

__all__ = ["SceneSettings", "SyntheticSpec", "run"]


def run(spec: SyntheticSpec, out: Path) -> Path:
    total = spec.classes * (spec.train_per_class + spec.val_per_class)
    with progress_bar() as bar:
        task = bar.add_task("drawing images", total=total)
        generate(out, spec, lambda: bar.advance(task))
    return out
