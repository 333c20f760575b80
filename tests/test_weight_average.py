"""bench/weight_average.py: the model-soup and WiSE-FT checkpoints of the docs/experiments.md levers."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import weight_average as wa  # noqa: E402

from two_tower_model import TwoTowerModel  # noqa: E402


def _perturbed(tiny_encoder_dir, path, shift, **cfg):
    m = TwoTowerModel.from_pretrained(str(tiny_encoder_dir), **cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(shift)
    m.save(path)
    return m


def test_weighted_average_and_wise_are_exact_and_the_output_loads(tiny_encoder_dir, tmp_path):
    a = _perturbed(tiny_encoder_dir, tmp_path / "a.pt", 0.0)
    b = _perturbed(tiny_encoder_dir, tmp_path / "b.pt", 0.3)
    out = tmp_path / "avg.pt"
    r = wa.main(wa.parse_args(["--checkpoints", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"),
                               "--weights", "3", "1", "--output", str(out)]))
    assert r["weights"] == pytest.approx([0.75, 0.25])
    avg = TwoTowerModel.from_pretrained(out).state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    k = "query_tower.encoder.embeddings.word_embeddings.weight"
    assert torch.allclose(avg[k], 0.75 * sa[k] + 0.25 * sb[k], atol=1e-6)
    assert not torch.allclose(avg[k], sa[k])  # not just the first checkpoint
    # WiSE-FT: alpha x fine-tuned + (1 - alpha) x the pretrained base it came from
    base = TwoTowerModel.from_pretrained(str(tiny_encoder_dir)).state_dict()
    wise = tmp_path / "wise.pt"
    wa.main(wa.parse_args(["--checkpoints", str(tmp_path / "b.pt"), "--wise", "0.4", "--output", str(wise)]))
    w = TwoTowerModel.from_pretrained(wise).state_dict()
    assert torch.allclose(w[k], 0.4 * sb[k] + 0.6 * base[k], atol=1e-6)
    assert torch.load(wise, weights_only=True)["averaged_from"][-1] == "<pretrained base>"


def test_bad_inputs_are_one_line_errors(tiny_encoder_dir, tmp_path):
    _perturbed(tiny_encoder_dir, tmp_path / "a.pt", 0.0)
    _perturbed(tiny_encoder_dir, tmp_path / "c.pt", 0.0, query_max_len=16)
    script = ROOT / "bench" / "weight_average.py"

    def run(*argv):
        return subprocess.run([sys.executable, str(script), *argv], capture_output=True, text=True)
    cases = [
        (["--checkpoints", str(tmp_path / "a.pt"), "--output", str(tmp_path / "o.pt")], "two or more"),
        (["--checkpoints", str(tmp_path / "a.pt"), str(tmp_path / "c.pt"), "--output", str(tmp_path / "o.pt")],
         "query_max_len"),
        (["--checkpoints", str(tmp_path / "a.pt"), str(tmp_path / "a.pt"), "--weights", "1",
          "--output", str(tmp_path / "o.pt")], "1 weights for 2"),
        (["--checkpoints", str(tmp_path / "a.pt"), "--wise", "0.5", "--output", str(tmp_path / "a.pt")], "exists"),
    ]
    for argv, needle in cases:
        r = run(*argv)
        assert r.returncode == 2, (argv, r.stderr)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o.pt").exists()
