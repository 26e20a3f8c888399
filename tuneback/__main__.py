from tuneback.cli import cli

cli()
