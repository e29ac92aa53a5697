import json

import pytest

from conftest import DATA, CharTokenizer
from prefixrl.data import ChatFormatConfig, ProblemSetConfig, chat_prompt_ids, load_problems, prefixed_prompt_ids
from prefixrl.records import Problem


def test_load_shared_jsonl():
    problems = load_problems(ProblemSetConfig(path=str(DATA / "aime2024.jsonl")))
    assert len(problems) == 30 and problems[0].problem_id == "60" and problems[0].source == "aime2024"
    assert "025" in {p.answer for p in problems}  # zero padding kept
    assert "solution" in problems[0].metadata


def _write(tmp_path, lines):
    path = tmp_path / "set.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize(
    "lines, message",
    [
        (
            ['{"id": 1, "problem": "a", "answer": "1"}', '{"id": 2, "problem": "b"'],
            r"set.jsonl:line 2: malformed JSON",
        ),
        (['{"id": 1, "problem": "a", "answer": "1"}', '{"id": 2, "answer": "2"}'], r"line 2: missing field.*problem"),
        (['{"id": 1, "problem": "  ", "answer": "1"}'], r"line 1: empty or non-string prompt"),
        (['{"id": 1, "problem": "a", "answer": "1"}', "", '{"id": 1, "problem": "b", "answer": "2"}'],
         r"line 3: duplicate id '1' \(first seen at line 1\)"),
        (['{"id": 1, "problem": "a", "answer": ""}'], r"line 1: empty reference answer"),
        (["[1, 2]"], r"line 1: expected a JSON object"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, lines, message):
    with pytest.raises(ValueError, match=message):
        load_problems(ProblemSetConfig(path=_write(tmp_path, lines)))


def test_configurable_fields_and_numbering(tmp_path):
    path = _write(tmp_path, ['{"question": "a", "final": 7}', '{"question": "b", "final": "x"}'])
    problems = load_problems(ProblemSetConfig(path=path, id_field=None, prompt_field="question",
                                              answer_field="final", source="mine"))
    assert [(p.problem_id, p.prompt, p.answer) for p in problems] == [("mine-1", "a", "7"), ("mine-2", "b", "x")]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [1, 2], "problem": ["a", "b"], "answer": ["1", "2"]}), tmp_path / "s.parquet")
    problems = load_problems(ProblemSetConfig(path=str(tmp_path / "s.parquet")))
    assert [p.problem_id for p in problems] == ["1", "2"]
    pq.write_table(pa.table({"id": [1, 1], "problem": ["a", "b"], "answer": ["1", "2"]}), tmp_path / "d.parquet")
    with pytest.raises(ValueError, match=r"d.parquet:row 2: duplicate id"):
        load_problems(ProblemSetConfig(path=str(tmp_path / "d.parquet")))


def test_datasets_directory(tmp_path):
    try:
        import datasets
    except ImportError:
        with pytest.raises(ImportError, match="datasets"):
            load_problems(ProblemSetConfig(path=str(tmp_path)))
        return
    datasets.Dataset.from_list([{"id": "a", "problem": "p", "answer": "1"}]).save_to_disk(str(tmp_path / "ds"))
    assert load_problems(ProblemSetConfig(path=str(tmp_path / "ds")))[0].problem_id == "a"


def test_path_and_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_problems(ProblemSetConfig(path=str(tmp_path / "nope.jsonl")))
    (tmp_path / "x.csv").write_text("id,problem\n")
    with pytest.raises(ValueError, match="unsupported problem file"):
        load_problems(ProblemSetConfig(path=str(tmp_path / "x.csv")))
    with pytest.raises(ValueError, match="empty"):
        load_problems(ProblemSetConfig(path=_write(tmp_path, [])))
    with pytest.raises(ValueError, match="placeholder"):
        ChatFormatConfig(user_template="no slot")


def test_chat_prompt_with_real_template_and_prefix_concatenation():
    tok = CharTokenizer(DATA / "model_configs" / "Qwen2.5-7B-Instruct" / "chat_template.jinja")
    problem = Problem(problem_id="p", prompt="What is 1+1?", answer="2")
    cfg = ChatFormatConfig(user_template="{prompt} Answer in \\boxed{{}}.")
    ids = chat_prompt_ids(problem, tokenizer=tok, cfg=cfg)
    text = tok.decode(ids)
    assert "<|im_start|>user\nWhat is 1+1? Answer in \\boxed{}.<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")  # generation prompt, no end of turn
    prefix_ids = tok.encode("Let me think")
    full = prefixed_prompt_ids(ids, prefix_ids)
    assert full == ids + prefix_ids and tok.decode(full).endswith("assistant\nLet me think")
