from receiver.cli import main

main(prog_name="receiver")
