"""The prompts the serving benchmark and the GPU check send: grounded questions and open asks."""

PROMPTS = [
    "Context: Acme reported revenue of $12.4 billion in 2024. Jane Park is the CEO.\n"
    "Question: Who leads Acme and how much revenue did it report?",
    "Explain in a few sentences why the sky is blue.",
    "Context: The Amazon river flows through Brazil, Peru and Colombia.\n"
    "Question: Which countries does the Amazon flow through?",
    "Write three short tips for staying focused while studying.",
]
