"""Shared by the pipeline and the alignment code: model loading (GGUF, tiny models, the one LoRA
merge), device resolution, JSONL records and their encoding, prompts. Imports nothing from
sublim.llm_validation.pipeline or .alignment (tests/test_import_graph.py checks there is no cycle)."""
