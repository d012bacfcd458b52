"""The LLM operator: client.py (model specs, credentials, prices, the SDK client), operator.py
(LLMOperator: mutate, merge-then-crossover, repair round, fix), bandit.py (which model proposes)."""
