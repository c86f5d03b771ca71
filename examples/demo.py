"""The README's demo: complete a Python function with the model shipped in the package.

No download and no GPU: the default model (`codegen-stdlib-9M`, trained by run_clm.py on the Python
standard library, see examples/train_default_model.md) is part of the package. Decoding is Taskflow's
default (sampling, temperature 0.6, top-k 5), seeded so that the output is repeatable, and stops where
the function ends.
"""
from codegen import Taskflow
from codegen.languages import function_end_stops

PROMPT = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'


def main():
    flow = Taskflow("code_generation", stop=function_end_stops("Python"), seed=0)
    print(PROMPT + flow(PROMPT)[0])


if __name__ == "__main__":
    main()
