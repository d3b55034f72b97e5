"""How much of the requested label a class-conditional sample set carries (issue 13, item 2; docs/RESULTS.md).

``lamamba experiment``'s sample sets are class-balanced: sample i was drawn for label i mod 10. This classifies
every sample with the experiment's Fashion-MNIST classifier and reports the class accuracy, the per-label
accuracy, how the predicted classes are spread, and the mutual information between requested label and predicted
class in bits (0: the label has no effect; log2(10) = 3.32: every sample is classified as its label).

    python benchmarks/label_information.py CLASSIFIER.pt SAMPLES.npz [SAMPLES.npz ...]
"""
from __future__ import annotations

import sys

import numpy as np
import torch

NUM_CLASSES = 10


def mutual_information_bits(labels: np.ndarray, predicted: np.ndarray, classes: int = NUM_CLASSES) -> float:
    """I(label; predicted) in bits, from the joint histogram of the two."""
    joint = np.zeros((classes, classes))
    np.add.at(joint, (labels, predicted), 1)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log2(joint[nonzero] / outer[nonzero])).sum())


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    classifier, *sets = argv
    net = torch.jit.load(classifier).eval()
    for path in sets:
        images = np.load(path)["arr_0"]                                  # (N, H, W, C) uint8
        labels = np.arange(len(images)) % NUM_CLASSES
        x = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 127.5 - 1
        with torch.no_grad():
            predicted = torch.cat([net(x[i:i + 1000])["logits"].argmax(1) for i in range(0, len(x), 1000)]).numpy()
        per_label = [(predicted[labels == k] == k).mean() for k in range(NUM_CLASSES)]
        print(f"{path}: {len(images)} samples, class accuracy {(predicted == labels).mean():.4f}, "
              f"I(label; class) {mutual_information_bits(labels, predicted):.3f} bits")
        print("  per-label accuracy", " ".join(f"{a:.2f}" for a in per_label))
        print("  predicted classes ", " ".join(str(c) for c in np.bincount(predicted, minlength=NUM_CLASSES)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
