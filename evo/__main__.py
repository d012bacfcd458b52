from evo.cli import app

app(prog_name="evo")
