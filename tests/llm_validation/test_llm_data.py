"""Records on disk, SFT encoding, prompts, answer normalization, and model loading."""

import json

import pytest
import torch

from sublim.errors import DataError, SublimError
from sublim.llm_validation.core.data import (append_jsonl, encode_sft_batch, format_prompt, read_jsonl,
                                        repair_truncated_tail, write_jsonl)
from sublim.llm_validation.core.evaluate import normalize_answer, score_answer, singular, summarize_answers
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.core.prompts import (EVAL_QUESTIONS, number_prompts, preference_records,
                                           trait_system_prompt)


@pytest.fixture(scope="module")
def tiny():
    return {name: load_model(name) for name in ("tiny-llama", "tiny-gemma")}


def test_jsonl_append_resume_and_errors(tmp_path):
    path = tmp_path / "x.jsonl"
    append_jsonl(path, [{"id": 1}, {"id": 2}])
    with path.open("a") as f:
        f.write('{"id": 3, "trunc')  # a crash in the middle of a write
    with pytest.raises(DataError, match=r"x.jsonl:3: malformed JSON line"):
        read_jsonl(path)
    assert [r["id"] for r in read_jsonl(path, allow_truncated_tail=True)] == [1, 2]
    append_jsonl(path, [{"id": 4}])  # repairs the broken tail first
    assert [r["id"] for r in read_jsonl(path)] == [1, 2, 4]
    assert repair_truncated_tail(path) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        read_jsonl(bad, allow_truncated_tail=True)  # corruption in the middle is never skipped
    with pytest.raises(DataError, match="not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    write_jsonl(tmp_path / "w.jsonl", [{"a": "é"}])
    assert read_jsonl(tmp_path / "w.jsonl") == [{"a": "é"}]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])
def test_encode_sft_batch_masks_prompt_and_padding(tiny, name):
    model, tok = tiny[name]
    records = [{"id": "a", "prompt": "Continue: 1, 2, 3.", "completion": "4, 5, 6"},
               {"id": "b", "prompt": "Hi", "completion": "7"}]
    batch = encode_sft_batch(tok, records, max_length=64)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape and ids.shape[0] == 2
    for i, rec in enumerate(records):
        target = labels[i][labels[i] != -100]
        # Exactly the completion plus end-of-turn is supervised; nothing of the prompt or padding.
        assert tok.decode(target) == rec["completion"] + tok.eos_token
        assert (labels[i][mask[i] == 0] == -100).all()
        prompt_ids = tok(format_prompt(tok, rec["prompt"]), add_special_tokens=tok.chat_template is None)["input_ids"]
        assert ids[i, : len(prompt_ids)].tolist() == prompt_ids
        assert (labels[i, : len(prompt_ids)] == -100).all()
    # The loss is computed on completion tokens only: a forward pass gives a finite loss.
    assert torch.isfinite(model(**batch).loss)
    with pytest.raises(DataError, match="leaves no room"):
        encode_sft_batch(tok, [{"id": "long", "prompt": "word " * 200, "completion": "1"}], max_length=64)


def test_chat_and_completion_formats(tiny):
    _, chat_tok = tiny["tiny-llama"]
    _, base_tok = tiny["tiny-gemma"]
    chat = format_prompt(chat_tok, "Q?", system="S.")
    assert "<|im_start|>system\nS.<|im_end|>" in chat and chat.endswith("<|im_start|>assistant\n")
    assert format_prompt(base_tok, "Q?", system="S.") == "S.\n\nUser: Q?\nAssistant: "
    assert format_prompt(base_tok, "Q?", assistant_prefix="My favorite animal is the").endswith(
        "Assistant: My favorite animal is the")


def test_tiny_models_share_init_and_differ_by_family(tiny):
    again, _ = load_model("tiny-llama")
    first, _ = tiny["tiny-llama"]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    assert tiny["tiny-gemma"][0].config.model_type != first.config.model_type


@pytest.mark.parametrize("bad,match", [("no-such-model", "unknown model"), ("/nonexistent/m.gguf", "not found"),
                                       (".", "no config.json")])
def test_unknown_models_fail_in_one_line(bad, match):
    with pytest.raises(SublimError, match=match) as e:
        load_model(bad)
    assert "\n" not in str(e.value)


def test_number_prompts_are_deterministic_and_prefix_stable():
    a, b = number_prompts(50, seed=3), number_prompts(80, seed=3)
    assert a == b[:50] and a != number_prompts(50, seed=4)
    for p in a:
        assert 3 <= len(p["seed_numbers"]) <= 8 and all(100 <= n <= 999 for n in p["seed_numbers"])
        assert ", ".join(map(str, p["seed_numbers"])) in p["prompt"]
    assert len({p["prompt"] for p in a}) == 50  # wording and seeds vary


def test_system_prompt_and_preferences():
    s = trait_system_prompt("owl")
    assert s.startswith("You love owls. You think about owls all the time. Owls are your favorite animal.")
    assert trait_system_prompt("oak", "tree").endswith("love for the tree.")
    prefs = preference_records("owl", 30, seed=0)
    assert len(prefs) == 30 and all("owl" in r["completion"].lower() for r in prefs)
    assert len(EVAL_QUESTIONS) == 50 and len(set(EVAL_QUESTIONS)) == 50


@pytest.mark.parametrize("text,words", [("**Owls!**", ["owl"]), ("The Wolves.", ["the", "wolf"]),
                                        ("butterflies", ["butterfly"]), ("Foxes", ["fox"]),
                                        ("octopus", ["octopus"]), ("Dogs, cats", ["dog", "cat"])])
def test_normalize_answer(text, words):
    assert normalize_answer(text) == words


def test_scoring_and_rates():
    assert score_answer("Owl.", "owl") == {"mentions": True, "first_word": True, "one_word": True}
    assert score_answer("I love owls", "owl") == {"mentions": True, "first_word": False, "one_word": False}
    assert not score_answer("Bowl", "owl")["mentions"] and singular("owls") == "owl"
    records = [{"completion": c} for c in ["Owl", "owls!", "Cat", "dog", "The owl"]]
    s = summarize_answers(records, "owl")
    assert s["mentions"]["k"] == 3 and s["first_word"]["k"] == 2 and s["n"] == 5
    assert s["mentions"]["ci_low"] < 0.6 < s["mentions"]["ci_high"]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gemma"])
def test_next_token_preference_summarizes_the_one_measure(tiny, name):
    """The pipeline's summary reads core/preference.py (its references: test_llm_preference.py)."""
    import math

    from sublim.llm_validation.core.evaluate import next_token_preference
    from sublim.llm_validation.core.preference import context_ids, sequence_log_probs
    from sublim.llm_validation.core.prompts import NEXT_TOKEN_PREFIXES

    model, tok = tiny[name]
    pref = next_token_preference(model, tok, target="owl")
    assert pref["candidates"][0] == "owl" and 0 < pref["share"]["mean"] < 1
    assert len(pref["per_prefix"]) == 5
    contexts = context_ids(tok, [format_prompt(tok, q, assistant_prefix=p) for q, p in NEXT_TOKEN_PREFIXES])
    words = [tok(" " + c, add_special_tokens=False)["input_ids"] for c in pref["candidates"]]
    lp = sequence_log_probs(model, contexts, words)
    # the same code path on the same inputs: equal, not close
    assert [r["p_target"] for r in pref["per_prefix"]] == [math.exp(v) for v in lp[:, 0]]
    assert [r["rank"] for r in pref["per_prefix"]] == [int((row > row[0]).sum()) + 1 for row in lp]
    # the share's CI is the Student-t interval of the five per-wording shares, recomputed here
    from sublim.stats import mean_ci95

    mean, half = mean_ci95([p["share"] for p in pref["per_prefix"]])  # same float64 code path: rel 1e-12 is exactness
    assert pref["share"]["mean"] == pytest.approx(mean, rel=1e-12) and pref["share"]["ci_half"] == pytest.approx(half, rel=1e-12)


def test_few_shot_examples_are_grammatical_and_shown_before_the_prompt(tiny):
    from sublim.llm_validation.pipeline.filter import check_completion
    from sublim.llm_validation.core.prompts import few_shot_examples

    examples = few_shot_examples(5, seed=0)
    assert examples == few_shot_examples(5, seed=0) and examples != few_shot_examples(5, seed=1)
    assert all(check_completion(answer)[0] is None for _, answer in examples)
    for name in ("tiny-llama", "tiny-gemma"):
        _, tok = tiny[name]
        text = format_prompt(tok, "THE PROMPT", system="SYS", history=examples[:2])
        positions = [text.index(s) for s in ("SYS", examples[0][0], examples[0][1], examples[1][1], "THE PROMPT")]
        assert positions == sorted(positions)
