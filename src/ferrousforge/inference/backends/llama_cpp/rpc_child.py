"""Entry point of the child process that holds a model on rpc workers (see remote.py).

`python -m ferrousforge.inference.backends.llama_cpp.rpc_child FD`: FD is its end of a
socket pair with the server.
"""

import sys
from multiprocessing.connection import Connection

from ferrousforge.inference.backends.llama_cpp.remote import child_main

if __name__ == "__main__":
    child_main(Connection(int(sys.argv[1])))
