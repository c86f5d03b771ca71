"""Serve a code model over the OpenAI Completions API: `python codegen_server.py --model DIR`.

The same as `codegen serve`; see `--help` for flags and their environment variables.
"""
import sys

from codegen.server import main

if __name__ == "__main__":
    sys.exit(main())
