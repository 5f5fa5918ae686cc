"""The experiment: teacher -> numbers (generate) -> filter -> students (finetune) -> evaluate ->
summary (report), as restartable stages over one run directory (stages.py), its configs
(config.py), its CLI (cli.py: `sublim llm run|finetune|filter`) and the GPU entry."""
