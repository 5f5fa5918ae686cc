"""llm_validation"""
