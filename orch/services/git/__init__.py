"""orch's hardened git: how it runs git, and how it reads a repository an agent can write."""
