"""Built-in datasets as evaluation inputs, and the sample -> evaluate round trip the README shows."""
import json

import numpy as np
import pytest

from lamamba.cli import main
from lamamba.evaluation.inputs import builtin_images, open_input

pytestmark = pytest.mark.filterwarnings("ignore::lamamba.evaluation.FewSamplesWarning")


def test_builtin_dataset_names_are_inputs():
    images, stats = open_input("digits:test")
    assert stats is None and images.num_images == 179 and images.image_shape == (16, 16, 1)
    batch = next(images.batches(8))
    assert batch.dtype == np.uint8 and batch.shape == (8, 16, 16, 1)
    assert builtin_images("not-a-dataset") is None


def test_make_ref_from_builtin_then_evaluate_npz(tmp_path):
    ref, out = tmp_path / "ref.npz", tmp_path / "m.json"
    assert main(["evaluate", "--make-ref", "digits:test", str(ref), "--features", "pixels"]) == 0
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "samples.npz", arr_0=rng.integers(0, 256, (12, 16, 16, 1), dtype=np.uint8))
    assert main(["evaluate", str(ref), str(tmp_path / "samples.npz"), "--features", "pixels",
                 "--metrics", "fid", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "fid" in json.dumps(report)
