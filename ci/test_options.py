"""ci/build's and ci/test's refusals of options they cannot carry out: one
line naming the problem, exit status 1, before any work."""
import platform
import subprocess
from pathlib import Path

import pytest

CI = Path(__file__).resolve().parent


@pytest.mark.parametrize("command, message", [
    (["build", "--arch", "riscv64"],
     f"error: cannot build for riscv64: --arch takes aarch64 (cross-compiled) or {platform.machine()} (this machine)"),
    (["test", "--arch", "ppc64le"],
     f"error: cannot build for ppc64le: --arch takes aarch64 (cross-compiled) or {platform.machine()} (this machine)"),
    (["build", "--arch", "aarch64", "--cuda"],
     "error: --arch aarch64 builds the CPU flavour with Debian trixie's packages: --cuda, --conda "
     "and --distro do not apply"),
    (["test", "--quick"], "error: --quick applies to --arch aarch64 only"),
])
def test_an_option_it_cannot_carry_out_is_one_line(command, message):
    done = subprocess.run([str(CI / command[0]), *command[1:]], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == message
    assert "==>" not in done.stdout  # no step started
