"""`python -m tunesmith` as its own process: the exit code and message a shell sees, and a
command line that starts without importing torch."""

import subprocess
import sys


def test_console_script_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tunesmith", "data", "demo", "--set", "seed=notanint"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "field `seed`" in proc.stderr and "Traceback" not in proc.stderr


def test_building_the_command_line_imports_no_torch():
    probe = "import sys, tunesmith.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
