"""GFLOPs in the paper's convention: LaMamba-Diff against SPEC/Table 2, DiT against the DiT paper."""
import json

import pytest

from lamamba.cli import main
from lamamba.flops import PAPER_GFLOPS, PAPER_TABLE2_GFLOPS, measure


def rel(a, b):
    return abs(a - b) / b


@pytest.mark.parametrize("name,expected", [("LaMamba-Diff-S", 3.205406456), ("LaMamba-Diff-B", 12.340991816),
                                           ("LaMamba-Diff-L", 29.541107696), ("LaMamba-Diff-XL", 45.9253056)])
def test_released_config_matches_spec_counts(name, expected):
    assert rel(measure(name)["gflops"], expected) < 1e-3


@pytest.mark.parametrize("image_size", [256, 512, 1024])
def test_xl_dstate16_reproduces_table2(image_size):
    assert rel(measure("LaMamba-Diff-XL", image_size, d_state=16)["gflops"], PAPER_TABLE2_GFLOPS[image_size]) < 5e-3


@pytest.mark.parametrize("name,image_size", [("DiT-S/2", 256), ("DiT-B/4", 256), ("DiT-XL/2", 256),
                                             ("DiT-XL/2", 512), ("DiT-XL/2", 1024), ("DiT-L/8", 256)])
def test_dit_matches_dit_paper(name, image_size):
    assert rel(measure(name, image_size)["gflops"], PAPER_GFLOPS[(name, image_size)]) < 5e-3


def test_scan_is_counted_with_the_papers_rule():
    by_op = measure("LaMamba-Diff-XL", 256, d_state=16)["by_op"]
    assert abs(by_op["selective_scan_fwd"] - 3.9911424) < 1e-6   # 9*L*D*N + L*D summed over blocks


def test_cli_json(capsys):
    assert main(["flops", "--model", "LaMamba-Diff-S", "--image-size", "256", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"][0]["params"] == 33_380_936 and "multiply-adds" in out["convention"]


def test_cli_unknown_model(capsys):
    assert main(["flops", "--model", "LaMamba-Diff-Q"]) == 2
    assert "unknown model" in capsys.readouterr().err
