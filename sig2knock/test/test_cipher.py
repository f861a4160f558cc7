"""
Tests for sig2knock.protocol.cipher: pycryptodome loaded with its AES-GCM code ready and without
a child process. Each runs in a fresh interpreter, since both are import-time behaviour.
"""

from twisted.trial.unittest import SynchronousTestCase

from sig2knock.test.common import run_module_code


def run_python(script: str) -> str:
    """
    What ``script`` prints, run by a fresh interpreter.
    """
    result = run_module_code(script, [])
    if result.returncode:
        raise AssertionError(result.stderr)
    return result.stdout


class LoadCipherTests(SynchronousTestCase):
    """
    ``cipher.load_gcm`` makes pycryptodome load its AES-GCM code before the first knock needs it.
    """

    def test_loadsGcmCode(self) -> None:
        script = (
            "import sys\n"
            "from sig2knock.protocol import cipher\n"
            "before = 'Crypto.Cipher._mode_gcm' in sys.modules\n"
            "cipher.load_gcm()\n"
            "print(before, 'Crypto.Cipher._mode_gcm' in sys.modules)\n"
        )
        self.assertEqual(run_python(script).split(), ["False", "True"])


class StartsNoProcessTests(SynchronousTestCase):
    """
    Loading the client's cryptography starts no child process (pycryptodome's loader would run
    ``file`` on the interpreter; see ``sig2knock.protocol.cipher``).
    """

    def test_noProcess(self) -> None:
        script = (
            "import sys\n"
            "started = []\n"
            "sys.addaudithook(lambda event, args: event in ('subprocess.Popen', 'os.posix_spawn',"
            " 'os.exec', 'os.fork') and started.append(event))\n"
            "from sig2knock.protocol import cipher\n"
            "cipher.load_gcm()\n"
            "print(started)\n"
        )
        self.assertEqual(run_python(script).strip(), "[]")
