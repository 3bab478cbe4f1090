"""Identity: who is asking (authentication) and what they may do (the policy)."""
