"""Input: a plan as written (YAML/JSON) becomes a validated, routed plan; agent types, prompts, prices."""
