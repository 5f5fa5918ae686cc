"""The paper's recipe beside the distillation one: sampled-token SFT on filtered numbers.

Two LoRA students (r = lora_r) from the shared init, one on the teacher's filtered completions and
one (the control) on the un-prompted base model's, `sft_records` each, the same fine-tuning code
as `sublim llm run` (finetune.py, completion-only cross-entropy). Their difference is the paper's
effect; the distillation arms read the same measure.
"""

from __future__ import annotations

from pathlib import Path

from sublim.rundir import atomic_write_json

from sublim.llm_validation.distill.contexts import load_context_records
from sublim.llm_validation.core.preference import profile
from sublim.llm_validation.core.models import base_copy, load_finetuned
from sublim.llm_validation.core.config import FinetuneConfig
from sublim.llm_validation.core.finetune import finetune


def run_sft(c, out_dir: Path, device: str) -> None:
    ft = FinetuneConfig(method="lora", epochs=c.sft_epochs, lr=c.sft_lr, batch_size=c.batch_size,
                        lora_r=c.lora_r, lora_alpha=c.lora_alpha, max_length=c.max_length,
                        checkpoint_every=c.checkpoint_every, seed=0)
    for arm, path in (("teacher_numbers", c.sft_teacher_file), ("base_numbers", c.sft_base_file)):
        out = out_dir / "sft" / arm
        if (out / "profile.json").exists():
            continue
        records = load_context_records("file", path, c.sft_records, 0)
        model, tok = base_copy(c.model, device=device)
        finetune(c.model, records, ft, out / "finetune", model=model, tokenizer=tok)
        merged, _ = load_finetuned(out / "finetune", base=base_copy(c.model, device=device), device=device)
        atomic_write_json(out / "profile.json", profile(merged, tok, device, None, c.eval_batch_size,
                                                             empty_system=c.empty_system))
