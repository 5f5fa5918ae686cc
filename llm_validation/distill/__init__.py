"""Number-token logit distillation on a real LLM: `sublim llm distill` (see run.py for the layout).

config.py     DistillConfig (every knob, validated) and presets   vocab.py      the number vocabulary
contexts.py   context sources and encoding                         cache.py      teacher distributions
forward.py    completion-position hidden states, restricted KL     students.py   init, train, resume
teachers.py   one handler per teacher kind                         report.py     summary, table, figure
cli.py        the command                                          (the animal preference: core/preference.py)
sft.py        the sampled-token SFT arm                            alignment.py  the theorem's a_i
arms.py       typed arms: keys, parser, arms.json, a config's arms
run.py        the stages (a list run by sublim/stages.py) and their shared inputs
"""
