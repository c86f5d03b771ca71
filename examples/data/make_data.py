"""Rebuild train.json and test.json: top-level functions from Python's standard library.

    python examples/data/make_data.py examples/data

Functions come from the running interpreter's stdlib (3.11.7 for the files here):
undecorated top-level `def`s of 150 to 2500 characters, the first 400 from the
TRAIN modules and the first 60 from the held-out TEST modules, in file order.
"""
import ast
import json
import sys
import sysconfig
from pathlib import Path

STDLIB = Path(sysconfig.get_paths()["stdlib"])
TRAIN = ["textwrap", "shlex", "string", "fnmatch", "glob", "posixpath", "genericpath", "shutil", "heapq", "bisect",
         "functools", "copy", "pprint", "difflib", "base64", "calendar", "colorsys", "random", "statistics",
         "fractions", "tokenize", "inspect", "os", "subprocess", "tarfile", "zipfile", "quopri", "uu",
         "locale", "platform", "pydoc", "traceback", "linecache", "warnings", "dis", "ast", "csv", "json/decoder",
         "json/encoder", "email/utils", "urllib/parse", "http/cookiejar", "logging/__init__", "sysconfig", "site",
         "codecs", "datetime", "decimal", "_pydecimal", "operator", "imghdr", "sndhdr", "mailbox", "nntplib"]
TEST = ["gettext", "mimetypes", "tempfile", "ftplib", "cgi", "webbrowser"]


def functions(module: str):
    source = (STDLIB / f"{module}.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and not node.decorator_list:
            code = ast.get_source_segment(source, node)
            if 150 <= len(code) <= 2500:
                yield {"code": code + "\n", "module": module.replace("/", "."), "name": node.name}


def main(out_dir: str):
    for split, modules, limit in (("train", TRAIN, 400), ("test", TEST, 60)):
        rows = [f for m in modules for f in functions(m)][:limit]
        with open(Path(out_dir) / f"{split}.json", "w") as out:
            out.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"{split}.json: {len(rows)} functions")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent))
