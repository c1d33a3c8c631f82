"""Task records: one TOML file per task, read by app.tasks (the single source of truth)."""
