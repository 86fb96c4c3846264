"""Claim verification: claim extraction, the rule verifier, the optional LLM judge, token labels."""
