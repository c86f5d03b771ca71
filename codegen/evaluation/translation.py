"""HumanEval-X translation: the model reads a solution in one language and writes it in another.

The prompt is CodeGeeX's (codegen.languages.translation_prompt):

    code translation
    Python:
    <source declaration>
    <source canonical solution>
    C++:
    <target declaration>

and the completion continues the target declaration. It is scored like a
generation sample of the target language: target prompt + completion + target tests.
"""
from __future__ import annotations

from ..languages import translation_prompt
from .problems import DISPLAY_NAME, Problem


def translation_prompts(sources: list[Problem], targets: list[Problem]) -> dict[str, str]:
    """target task_id -> the prompt that shows the source problem's solution, matched by problem number."""
    by_number = {p.number: p for p in sources}
    prompts = {}
    for target in targets:
        source = by_number.get(target.number)
        if source is None:
            raise ValueError(f"no source problem numbered {target.number} for {target.task_id}")
        source_code = source.declaration + "\n" + source.canonical_solution
        prompts[target.task_id] = translation_prompt(source_code, DISPLAY_NAME[source.language],
                                                     DISPLAY_NAME[target.language], target.declaration)
    return prompts
