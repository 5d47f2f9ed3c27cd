"""Task lists people keep (spec-kit, task-master, Kiro, Markdown checklists), read as orch plans."""
