"""Sample generation through a predictor: batching, stop handling, resuming, translation prompts.

A fake predictor stands in for the model: it "generates" the canonical solution
followed by more code, and applies stop strings the way codegen.generation does
(the text ends before the first stop string, which is not included).
"""
import json
from dataclasses import dataclass

import pytest

from codegen.evaluation.execution import evaluate
from codegen.evaluation.generate import existing_counts, generate_samples, plan_batches
from codegen.evaluation.problems import load_humaneval_x, read_samples
from codegen.evaluation.sandbox import Limits
from codegen.evaluation.translation import translation_prompts
from codegen.generation import GenerationConfig

MORE_CODE = {"python": "\n\ndef unrelated():\n    return 1\n\nprint(unrelated())\n",
             "js": "\nconst unrelated = () => {\n  return 1\n}\nconsole.log(unrelated())\n"}


@dataclass
class FakeSequence:
    text: str
    finish_reason: str


class FakePredictor:
    def __init__(self, answers):
        self.answers = answers          # prompt -> full text the "model" would write
        self.calls = []

    def generate(self, prompts, config):
        self.calls.append((list(prompts), config))
        results = []
        for prompt in prompts:
            text = self.answers[prompt]
            cuts = [text.find(s) for s in config.stop if s in text]
            if cuts:
                sequence = FakeSequence(text[:min(cuts)], "stop")
            else:
                sequence = FakeSequence(text, "length")
            results.append([sequence] * config.num_return_sequences)
        return results


def config(**overrides):
    return GenerationConfig(max_new_tokens=64, decode_strategy="sampling", temperature=0.8, top_p=0.95,
                            seed=overrides.pop("seed", 1), **overrides)


@pytest.mark.parametrize("language,count", [("python", 30), ("js", 15)])
def test_generated_canonical_solutions_pass(tmp_path, language, count):
    problems = [p for p in load_humaneval_x(language)[:count]]
    if language == "js":
        problems = [p for p in problems if p.canonical_solution.count("\n}") == 1]
    predictor = FakePredictor({p.prompt: p.canonical_solution + MORE_CODE[language] for p in problems})
    path = tmp_path / "samples.jsonl"
    written = generate_samples(predictor, problems, path, num_samples=2, config=config(), batch_size=4,
                               progress=False)
    assert written == 2 * len(problems)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert all("unrelated" not in row["completion"] for row in rows)
    evaluation = evaluate(problems, read_samples(path, problems), limits=Limits(timeout=10), workers=2)
    assert [v.task_id for v in evaluation.verdicts if not v.passed] == []


def test_batches_group_prompts_within_batch_size():
    problems = load_humaneval_x("python")[:5]
    wanted = {p.task_id: (0, 3) for p in problems}
    calls = plan_batches(problems, wanted, batch_size=8)
    # 3 samples each: two prompts (6 sequences) per call, the fifth alone
    assert [([p.task_id for p, _ in members], n) for members, n in calls] == [
        (["Python/0", "Python/1"], 3), (["Python/2", "Python/3"], 3), (["Python/4"], 3)]
    calls = plan_batches(problems[:1], {"Python/0": (5, 20)}, batch_size=8)
    assert [(members[0][1], n) for members, n in calls] == [(5, 8), (13, 8), (21, 4)]
    with pytest.raises(ValueError):
        plan_batches(problems, wanted, batch_size=0)


def test_resume_completes_an_interrupted_file(tmp_path):
    problems = load_humaneval_x("python")[:3]
    predictor = FakePredictor({p.prompt: p.canonical_solution for p in problems})
    path = tmp_path / "samples.jsonl"
    first = {"task_id": "Python/0", "completion_id": 0, "completion": "    return True\n"}
    # one whole line, then a line cut off mid-write
    path.write_text(json.dumps(first) + "\n" + '{"task_id": "Python/1", "compl')
    assert existing_counts(path, problems) == {"Python/0": 1, "Python/1": 0, "Python/2": 0}
    written = generate_samples(predictor, problems, path, num_samples=2, config=config(), batch_size=2,
                               progress=False)
    assert written == 5
    samples = read_samples(path, problems)
    assert sorted((s.task_id, s.completion_id) for s in samples) == [
        ("Python/0", 0), ("Python/0", 1), ("Python/1", 0), ("Python/1", 1), ("Python/2", 0), ("Python/2", 1)]
    assert samples[0].completion == "    return True\n"        # kept, not regenerated
    assert generate_samples(predictor, problems, path, num_samples=2, config=config(), progress=False) == 0


def test_samples_file_of_another_benchmark_is_refused(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text(json.dumps({"task_id": "CPP/0", "completion": "x"}) + "\n")
    with pytest.raises(ValueError, match="samples.jsonl:1: task 'CPP/0' is not part of this evaluation"):
        generate_samples(FakePredictor({}), load_humaneval_x("python")[:1], path, num_samples=1,
                         config=config(), progress=False)


def test_calls_carry_stop_sequences_and_reproducible_seeds(tmp_path):
    problems = load_humaneval_x("cpp")[:2]
    answers = {p.prompt: p.canonical_solution for p in problems}
    runs = []
    for directory in ("a", "b"):
        predictor = FakePredictor(answers)
        generate_samples(predictor, problems, tmp_path / directory / "s.jsonl", num_samples=2,
                         config=config(seed=7), batch_size=2, progress=False)
        runs.append([(c.seed, c.num_return_sequences, c.stop) for _, c in predictor.calls])
    assert runs[0] == runs[1]
    assert len({seed for seed, _, _ in runs[0]}) == 2            # each call its own seed
    assert all(stop == ["\n}"] and n == 2 for _, n, stop in runs[0])


def test_language_tag_is_prepended(tmp_path):
    problem = load_humaneval_x("cpp")[0]
    tagged = "// language: C++\n" + problem.prompt
    predictor = FakePredictor({tagged: problem.canonical_solution})
    generate_samples(predictor, [problem], tmp_path / "s.jsonl", num_samples=1, config=config(),
                     language_tag=True, progress=False)
    assert predictor.calls[0][0] == [tagged]


def test_translation_prompt_is_codegeexs_format():
    python = load_humaneval_x("python")
    cpp = load_humaneval_x("cpp")
    prompts = translation_prompts(python, cpp)
    source, target = python[3], cpp[3]
    expected = ("code translation\nPython:\n" + source.declaration + "\n" + source.canonical_solution.rstrip()
                + "\nC++:\n" + target.declaration)
    assert prompts["CPP/3"] == expected
    assert set(prompts) == {p.task_id for p in cpp}
    js = translation_prompts(cpp, load_humaneval_x("js"))["JavaScript/0"]
    assert js.startswith("code translation\nC++:\n") and "\nJavaScript:\n" in js


def test_translated_samples_are_judged_against_the_target_language(tmp_path):
    sources, targets = load_humaneval_x("python")[:4], load_humaneval_x("js")[:4]
    prompts = translation_prompts(sources, targets)
    predictor = FakePredictor({prompts[t.task_id]: t.canonical_solution + MORE_CODE["js"] for t in targets})
    path = tmp_path / "samples.jsonl"
    generate_samples(predictor, targets, path, num_samples=1, config=config(), prompts=prompts, progress=False)
    assert all(prompt.startswith("code translation\nPython:\n") for prompt in predictor.calls[0][0])
    evaluation = evaluate(targets, read_samples(path, targets), limits=Limits(timeout=10), workers=2)
    assert [v.status for v in evaluation.verdicts] == ["passed"] * 4
