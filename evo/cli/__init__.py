"""The command line: app.py (typer commands) and view.py (the live panel, and the run status that
`evo status`, `evo list` and the report derive). Import from those modules; this package imports
neither, so the report can use view.run_status without loading typer."""
