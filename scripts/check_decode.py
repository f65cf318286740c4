"""Exit 0 if libllama loads and decodes one token here; used by the install script.

Exit 1: the library cannot run here (signal, load error, failed decode); exit 3: a Python
package the bindings import is missing (no point rebuilding the library).

Runs the real check in a child process so that a SIGILL (a library built for
instructions this CPU cannot execute) becomes a message instead of a crash.
"""

import subprocess
import sys

CHILD = r"""
import ctypes, llama_cpp.llama_cpp as l
l.llama_backend_init()
l.llama_log_set(l.llama_log_callback(lambda *a: None), ctypes.c_void_p())
print(l.llama_print_system_info().decode())
"""

if __name__ == "__main__":
    # Import-level check first (missing library or symbols), then a real decode via doctor
    # when the package is importable.
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True)
    if r.returncode > 0 and "ModuleNotFoundError" in r.stderr:
        # A Python package is missing: rebuilding libllama would not help.
        print(f"the llama_cpp bindings cannot be imported:\n{r.stderr[-2000:]}", file=sys.stderr)
        sys.exit(3)
    if r.returncode != 0:
        sig = -r.returncode if r.returncode < 0 else None
        print(
            f"libllama failed to load (exit {r.returncode}{f', signal {sig}' if sig else ''}):\n"
            f"{r.stderr[-2000:]}",
            file=sys.stderr,
        )
        sys.exit(1)
    try:
        from ferrousforge.cli.doctor import decode_check
    except ImportError:
        sys.exit(0)  # package not installed yet: the load check is all we can do
    ok, detail = decode_check()
    if not ok:
        print(detail, file=sys.stderr)
    sys.exit(0 if ok else 1)
