"""benchmarks/official_dmae.py, the official DMAE release's step timing: its FLOP accounting
of what the release computes, and its error for a wrong --repo. (Timing the release needs a
checkout of it, which the tests do not have.)"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load():
    from benchmarks import official_dmae

    return official_dmae


def test_release_flops_add_the_teachers_last_blocks_and_its_decoder():
    from benchmarks import flops

    release, ours = load().release_flops(8)
    # ViT-L teacher on cls + 49 visible tokens: blocks 19-24 and its 8-block decoder, per image
    extra = 6 * flops.block_flops(50, 1024) + flops.decoder_flops(1024, 512, 8, 196, 49, 768)
    assert release - ours == 8 * extra
    assert round(ours / 1e9, 1) == 650.0 and round(release / 1e9, 1) == 797.0


def test_wrong_repo_is_named():
    r = subprocess.run([sys.executable, "-m", "benchmarks.official_dmae", "--repo=/nonexistent/DMAE"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "/nonexistent/DMAE" in r.stderr and "models_mae_distill.py" in r.stderr
