from batchml.cli import run

run()
