"""Number-token logit distillation on a real LLM: `sublim llm distill` (see run.py for the layout).

config.py   DistillConfig (every knob, validated) and presets     vocab.py    the number vocabulary
contexts.py context sources and encoding                           loss.py     restricted KL
forward.py  hidden states at completion positions                  cache.py    teacher distributions
teachers.py one handler per teacher kind                           students.py init, train, resume
preference.py next-token animal preference (55 contexts)           report.py   summary, table, figure
sft.py      the sampled-token SFT arm                              cli.py      the command
arms.py     which students and teachers a config asks for          alignment.py the theorem's a_i
run.py      the stages over one run directory
"""
