"""Ctrl-C during training leaves a usable run, and --resume finishes it exactly."""
import signal
import subprocess
import sys

import genlab


def test_ctrl_c_saves_a_usable_run_that_resumes_bit_exactly(tmp_path, trained_run, assert_same_weights):
    out = tmp_path / "interrupted"
    p = subprocess.Popen([sys.executable, "-m", "genlab", "train", "vae", "--epochs", "2", "--seed", "0",
                          "--out", str(out), "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:  # wait until the first epoch is done, then press Ctrl-C
        if line.startswith("Epoch 1,"):
            p.send_signal(signal.SIGINT)
            break
    rest, err = p.communicate(timeout=300)
    assert p.returncode == 130, (rest, err)
    assert "interrupted" in rest and "--resume" in rest
    assert "Traceback" not in err
    run = genlab.load(out)  # usable as it stands
    assert run.sample(4, seed=0).shape == (4, 1, 28, 28)
    r = subprocess.run([sys.executable, "-m", "genlab", "train", "vae", "--out", str(out), "--resume",
                        "--no-progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_same_weights(out, trained_run)
