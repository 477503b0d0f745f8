"""torchvision (for spandrel, diffusers and transformers) imports beside this torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_torchvision_spandrel_and_a_pipeline_import_in_a_new_process() -> None:
    """Here torchvision is PyPI's CUDA build beside the CPU torch: its compiled operators
    do not load, and without ``make_torchvision_importable`` its import (and so every
    diffusers pipeline's, and spandrel's) fails. Its operators stay unusable, as they
    would be without torchvision; its Python part works."""
    script = textwrap.dedent(
        """
        import torch
        from easel.worker.engine.torchvision_compat import make_torchvision_importable
        declared = make_torchvision_importable()
        import spandrel
        from diffusers import StableDiffusionInpaintPipeline
        from torchvision.transforms.functional import normalize
        from torchvision.extension import _has_ops
        out = normalize(torch.ones(3, 2, 2), [0.5] * 3, [0.5] * 3)
        assert float(out.sum()) == 12.0, out
        if declared:
            assert not _has_ops()
            try:
                torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
            except (NotImplementedError, RuntimeError) as exc:
                print("nms refused:", type(exc).__name__)
            else:
                raise AssertionError("nms ran without a kernel")
        print("declared" if declared else "loaded", make_torchvision_importable() == declared)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] in ("declared True", "loaded True"), done.stdout
