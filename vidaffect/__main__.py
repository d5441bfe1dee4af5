from vidaffect.cli import main

main(prog_name="vidaffect")
